"""``promql`` step: evaluate an instant query through the Prometheus HTTP API and assert on it."""

from __future__ import annotations

import asyncio
import json
import operator
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, Self

import aiohttp
from pydantic import BaseModel, ConfigDict, Field, model_validator

from service.errors import StepError
from service.steps import StepContext, StepOutcome, StepSpecBase
from service.steps.capture import TailBuffer, read_body
from service.steps.errors import reason
from service.times import Duration

_ERROR_TAIL = 2048  # how much of a non-API answer an error message quotes


class SampleExpectation(BaseModel):
    """``<sample value> <op> <value>`` must hold for every sample of the result."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    op: Literal["==", "!=", "<", "<=", ">", ">="]
    value: float


class RangeEvidence(BaseModel):
    """Also fetch the query over the last ``duration`` seconds, kept as evidence (never asserted)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    duration: Duration = Field(gt=0, le=7 * 86400)
    step: Duration = Field(default=15.0, gt=0, le=86400)


class Spec(StepSpecBase):
    """Run ``query`` as an instant query.

    With ``expect``: ok when there is at least one sample and every sample satisfies it.
    With ``expect_empty: true``: ok when the query returns no sample (an alert expression that has
    stopped firing). With neither: ok when the query runs; the result is evidence.
    """

    type: Literal["promql"]
    query: str = Field(min_length=1)
    expect: SampleExpectation | None = None
    expect_empty: bool = False
    range: RangeEvidence | None = None
    prometheus_url: str | None = Field(default=None, description="default: the service's Prometheus")
    timeout: Duration = Field(default=10.0, gt=0, le=3600)

    @model_validator(mode="after")
    def _one_assertion(self) -> Self:
        if self.expect is not None and self.expect_empty:
            raise ValueError("give either expect or expect_empty, not both")
        return self


_COMPARE: dict[str, Callable[[float, float], bool]] = {
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


class QueryError(StepError):
    """Prometheus refused the query or answered something that is not a query result."""


def expr_from_generator_url(url: str) -> str:
    """The alert's PromQL expression from an Alertmanager ``generatorURL`` (its ``g0.expr`` parameter)."""
    values = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query).get("g0.expr")
    if not values or not values[0].strip():
        raise ValueError(f"no g0.expr in generatorURL {url!r}")
    return values[0]


def alert_expr_spec(generator_url: str, *, timeout: float = 10.0) -> Spec:
    """The ``alert_expr`` check: the alert's own expression, which holds once it returns nothing.

    It is sent to the service's Prometheus, never to the host named in the URL, which comes from the
    webhook sender.
    """
    return Spec(
        type="promql",
        name="alert_expr",
        query=expr_from_generator_url(generator_url),
        expect_empty=True,
        timeout=timeout,
    )


def format_labels(labels: Mapping[str, str]) -> str:
    inner = ", ".join(f"{k}={json.dumps(v)}" for k, v in sorted(labels.items()))
    return f"{{{inner}}}"


async def _api(session: aiohttp.ClientSession, url: str, params: Mapping[str, str]) -> dict[str, Any]:
    """POST to a Prometheus query endpoint (form-encoded: long queries fit); the ``data`` object."""
    async with session.post(url, data=dict(params), allow_redirects=False) as resp:
        tail = TailBuffer(_ERROR_TAIL)
        body = await read_body(resp, tail)
        try:
            payload = json.loads(body) if body is not None else None
        except ValueError:
            payload = None
        if not isinstance(payload, dict):
            raise QueryError(f"HTTP {resp.status}, not a Prometheus API answer: {tail.text()!r}")
        if payload.get("status") != "success":
            raise QueryError(f"{payload.get('errorType', 'error')}: {payload.get('error', tail.text())}")
        data: dict[str, Any] = payload["data"]
        return data


def _samples(data: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Instant-query samples as ``{"labels", "value", "timestamp"}``; value as Prometheus wrote it."""
    kind, result = data.get("resultType"), data.get("result")
    if kind == "scalar" and isinstance(result, list):
        return [{"labels": {}, "value": result[1], "timestamp": result[0]}]
    if kind == "vector" and isinstance(result, list):
        return [{"labels": s["metric"], "value": s["value"][1], "timestamp": s["value"][0]} for s in result]
    raise QueryError(f"result type {kind!r}: use an expression that gives an instant vector or scalar")


def _render(samples: Sequence[Mapping[str, Any]]) -> str:
    return "".join(f"{format_labels(s['labels'])} => {s['value']}\n" for s in samples) or "(no samples)\n"


async def run(spec: Spec, ctx: StepContext) -> StepOutcome:
    started = time.monotonic()
    base = (spec.prometheus_url or ctx.prometheus_url).rstrip("/")
    tail = TailBuffer(ctx.output_limit)
    data: dict[str, Any] = {"query": spec.query, "prometheus": base}

    def outcome(ok: bool, status: str, summary: str) -> StepOutcome:
        return StepOutcome(
            ok=ok,
            status=status,
            summary=summary,
            output=tail.text(),
            data=data,
            duration_s=time.monotonic() - started,
        )

    try:
        async with asyncio.timeout(spec.timeout), aiohttp.ClientSession() as session:
            samples = _samples(await _api(session, f"{base}/api/v1/query", {"query": spec.query}))
            if spec.range is not None:
                data["range"] = await _range_evidence(session, base, spec.query, spec.range)
    except TimeoutError:
        return outcome(False, "timeout", f"Prometheus did not answer within {spec.timeout:g}s: {spec.query}")
    except QueryError as exc:
        return outcome(False, "error", f"query failed: {exc}: {spec.query}")
    except (aiohttp.ClientError, OSError) as exc:
        return outcome(False, "failed", f"cannot query Prometheus at {base}: {reason(exc)}")

    data["samples"] = samples
    tail.feed(_render(samples).encode())
    count = f"{len(samples)} sample{'' if len(samples) == 1 else 's'}"
    if spec.expect_empty:
        return outcome(not samples, "ok" if not samples else "failed", f"{count}, expected none: {spec.query}")
    if spec.expect is None:
        return outcome(True, "ok", f"{count}: {spec.query}")
    op, value = spec.expect.op, spec.expect.value
    if not samples:
        return outcome(False, "failed", f"no samples, expected every value {op} {value:g}: {spec.query}")
    failing = [s for s in samples if not _COMPARE[op](float(s["value"]), value)]
    if failing:
        first = failing[0]
        summary = (
            f"{len(failing)} of {count} fail {op} {value:g} "
            f"(e.g. {format_labels(first['labels'])} = {first['value']}): {spec.query}"
        )
        return outcome(False, "failed", summary)
    return outcome(True, "ok", f"{count}, every value {op} {value:g}: {spec.query}")


async def _range_evidence(
    session: aiohttp.ClientSession, base: str, query: str, window: RangeEvidence
) -> list[dict[str, Any]] | dict[str, str]:
    """The query over the requested window, as evidence; its failure is recorded, not fatal."""
    end = time.time()
    params = {
        "query": query,
        "start": f"{end - window.duration:.3f}",
        "end": f"{end:.3f}",
        "step": f"{window.step:g}",
    }
    try:
        data = await _api(session, f"{base}/api/v1/query_range", params)
    except QueryError as exc:
        return {"error": str(exc)}
    return [{"labels": s["metric"], "values": s["values"]} for s in data.get("result", [])]
