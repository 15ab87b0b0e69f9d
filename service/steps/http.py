"""``http`` step: one HTTP request, with expected status codes and optional JSON expectations."""

from __future__ import annotations

import asyncio
import json
import re
import time
from typing import Any, Literal, Self

import aiohttp
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from service.steps import StepContext, StepOutcome, StepSpecBase
from service.steps.capture import TailBuffer, read_body
from service.steps.errors import reason
from service.times import Duration

_OPERATORS = ("equals", "not_equals", "in", "lt", "le", "gt", "ge", "exists")
_SEGMENT = re.compile(r"([^.\[\]]+)?((?:\[\d+\])*)")
_INDEX = re.compile(r"\[(\d+)\]")

JsonPath = tuple[str | int, ...]


def parse_json_path(path: str) -> JsonPath:
    """``"a.b[0].c"`` -> ``("a", "b", 0, "c")``; ``"[1].x"`` indexes a top-level array.

    Keys containing ``.``, ``[`` or ``]`` cannot be addressed; that keeps the syntax unambiguous.
    """
    if not path:
        raise ValueError("empty JSON path")
    parts: list[str | int] = []
    for i, segment in enumerate(path.split(".")):
        match = _SEGMENT.fullmatch(segment)
        if match is None or segment == "" or (match.group(1) is None and i > 0):
            raise ValueError(f"invalid JSON path {path!r} at segment {segment!r}")
        if match.group(1) is not None:
            parts.append(match.group(1))
        parts.extend(int(n) for n in _INDEX.findall(match.group(2)))
    return tuple(parts)


class JsonExpectation(BaseModel):
    """One assertion on the response JSON: ``path`` and exactly one operator.

    Operators: ``equals`` / ``not_equals`` (any JSON value), ``in`` (a list of values), ``lt`` / ``le`` /
    ``gt`` / ``ge`` (numbers), ``exists`` (true: the path resolves; false: it does not).
    """

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    path: str
    equals: Any = None
    not_equals: Any = None
    in_: list[Any] | None = Field(default=None, alias="in")
    lt: float | None = None
    le: float | None = None
    gt: float | None = None
    ge: float | None = None
    exists: bool | None = None

    @field_validator("path")
    @classmethod
    def _valid_path(cls, path: str) -> str:
        parse_json_path(path)
        return path

    @model_validator(mode="after")
    def _one_operator(self) -> Self:
        given = self.operators()
        if len(given) != 1:
            raise ValueError(f"give exactly one of {', '.join(_OPERATORS)} (got {len(given)})")
        return self

    def operators(self) -> list[str]:
        """The operators set in this expectation (by their YAML names)."""
        # model_fields_set tells "equals: null" apart from "equals not given".
        return [("in" if name == "in_" else name) for name in self.model_fields_set if name != "path"]


class Spec(StepSpecBase):
    """Send one request; succeed when the status is in ``expect_status`` and every ``expect_json`` holds.

    Redirects are not followed: a remediation endpoint that redirects is reported, not chased.
    """

    type: Literal["http"]
    method: Literal["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"] = "GET"
    url: str
    headers: dict[str, str] = Field(default_factory=dict)
    body: str | None = None
    json_body: Any = Field(default=None, alias="json", description="sent as application/json")
    expect_status: list[int] = Field(default_factory=lambda: [200], min_length=1)
    expect_json: list[JsonExpectation] = Field(default_factory=list)
    verify_tls: bool = True
    timeout: Duration = Field(default=10.0, gt=0, le=3600)

    model_config = ConfigDict(populate_by_name=True)

    @field_validator("expect_json", mode="before")
    @classmethod
    def _single_expectation(cls, value: Any) -> Any:
        # One expectation is usually enough; accept it without a surrounding list.
        return [value] if isinstance(value, dict) else value

    @model_validator(mode="after")
    def _one_body(self) -> Self:
        if self.body is not None and "json_body" in self.model_fields_set:
            raise ValueError("give either body or json, not both")
        return self


def resolve(doc: Any, path: JsonPath) -> tuple[bool, Any]:
    """(found, value) of ``path`` in a parsed JSON document."""
    node = doc
    for part in path:
        if isinstance(part, int):
            if not isinstance(node, list) or part >= len(node):
                return False, None
        elif not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _same(a: Any, b: Any) -> bool:
    # JSON true is not 1: Python's True == 1 must not leak into the comparison.
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    return bool(a == b)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check(expectation: JsonExpectation, doc: Any) -> dict[str, Any]:
    """Evaluate one expectation; a record with what was expected, what was found and ``ok``."""
    (op,) = expectation.operators()
    expected = getattr(expectation, "in_" if op == "in" else op)
    found, actual = resolve(doc, parse_json_path(expectation.path))
    record: dict[str, Any] = {"path": expectation.path, "op": op, "expected": expected, "actual": actual}
    if op == "exists":
        record["ok"] = found == expected
    elif not found:
        record["ok"] = False
        record["actual"] = "<missing>"
    elif op == "equals":
        record["ok"] = _same(actual, expected)
    elif op == "not_equals":
        record["ok"] = not _same(actual, expected)
    elif op == "in":
        record["ok"] = any(_same(actual, candidate) for candidate in expected)
    else:
        comparisons = {
            "lt": actual < expected if _is_number(actual) else False,
            "le": actual <= expected if _is_number(actual) else False,
            "gt": actual > expected if _is_number(actual) else False,
            "ge": actual >= expected if _is_number(actual) else False,
        }
        record["ok"] = comparisons[op]
    return record


async def run(spec: Spec, ctx: StepContext) -> StepOutcome:
    started = time.monotonic()
    tail = TailBuffer(ctx.output_limit)
    what = f"{spec.method} {spec.url}"

    def outcome(ok: bool, status: str, summary: str, data: dict[str, Any] | None = None) -> StepOutcome:
        return StepOutcome(
            ok=ok,
            status=status,
            summary=f"{what}: {summary}",
            output=tail.text(),
            data=data or {},
            duration_s=time.monotonic() - started,
        )

    try:
        async with asyncio.timeout(spec.timeout):
            connector = aiohttp.TCPConnector(ssl=spec.verify_tls)
            async with (
                aiohttp.ClientSession(connector=connector) as session,
                session.request(
                    spec.method,
                    spec.url,
                    headers=spec.headers,
                    data=spec.body.encode() if spec.body is not None else None,
                    json=spec.json_body,
                    allow_redirects=False,
                ) as resp,
            ):
                body = await read_body(resp, tail)
                status_code = resp.status
    except TimeoutError:
        return outcome(False, "timeout", f"no complete response within {spec.timeout:g}s")
    # A bad URL or header is the playbook's error, not the target's.
    except aiohttp.InvalidURL as exc:
        return outcome(False, "error", f"invalid URL {str(exc)!r}")
    except ValueError as exc:
        return outcome(False, "error", f"invalid request: {exc}")
    except (aiohttp.ClientError, OSError) as exc:
        return outcome(False, "failed", f"request failed: {reason(exc)}")

    data: dict[str, Any] = {"status": status_code}
    doc: Any = None
    parsed = False
    if body:
        try:
            doc = json.loads(body)
            parsed = True
            data["json"] = doc
        except ValueError:
            pass  # not JSON: fine unless an expectation needs it
    if status_code not in spec.expect_status:
        expected = " or ".join(str(c) for c in spec.expect_status)
        return outcome(False, "failed", f"status {status_code}, expected {expected}", data)
    if not spec.expect_json:
        return outcome(True, "ok", f"status {status_code}", data)
    if not parsed:
        why = "larger than the JSON limit" if body is None else "not JSON"
        return outcome(False, "failed", f"status {status_code} but the body is {why}", data)
    checks = [check(expectation, doc) for expectation in spec.expect_json]
    data["checks"] = checks
    failing = [c for c in checks if not c["ok"]]
    if failing:
        detail = "; ".join(f"{c['path']} {c['op']} {c['expected']!r}: got {c['actual']!r}" for c in failing)
        return outcome(False, "failed", f"status {status_code}, JSON expectation failed: {detail}", data)
    return outcome(True, "ok", f"status {status_code}, {len(checks)} JSON expectation(s) hold", data)
