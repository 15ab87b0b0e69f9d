"""``nats`` step: NATS server health from the monitoring endpoints, JetStream state and actions."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from collections.abc import Mapping
from typing import Any, Literal, NamedTuple, Self

import aiohttp
import nats
import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from pydantic import Field, model_validator

from service.steps import StepContext, StepOutcome, StepSpecBase
from service.steps.capture import TailBuffer, read_body
from service.steps.errors import reason
from service.times import Duration

Action = Literal["health", "varz", "jsz", "consumer_info", "publish", "purge_stream"]

# The fields each action needs; the loader's error names the missing one.
_REQUIRED: dict[str, tuple[str, ...]] = {
    "consumer_info": ("stream", "consumer"),
    "publish": ("subject",),
    "purge_stream": ("stream",),
}


class Spec(StepSpecBase):
    """One NATS check or action.

    - ``health``: monitoring ``/healthz`` answers ok; with ``jetstream: true`` (default) ``/jsz`` must
      also show JetStream enabled, because ``/healthz?js-enabled-only=true`` says ok when it is off.
    - ``varz``, ``jsz``: monitoring snapshots into ``data`` (``jsz`` with consumers; narrowed to
      ``stream``/``consumer`` when given).
    - ``consumer_info``: ``num_pending``, ``num_ack_pending``, ``num_redelivered`` through JetStream;
      fails when above ``max_pending`` / ``max_ack_pending``.
    - ``publish``: ``payload`` to ``subject`` (``ack: true`` waits for the JetStream acknowledgement).
    - ``purge_stream``: deletes every message of ``stream`` (the playbook loader requires an approval).
    """

    type: Literal["nats"]
    action: Action
    url: str | None = Field(default=None, description="client URL; default: the service's NATS")
    monitor_url: str | None = Field(default=None, description="monitoring URL; default: the service's")
    jetstream: bool = True
    stream: str | None = None
    consumer: str | None = None
    subject: str | None = None
    payload: str = ""
    ack: bool = False
    max_pending: int | None = Field(default=None, ge=0)
    max_ack_pending: int | None = Field(default=None, ge=0)
    timeout: Duration = Field(default=10.0, gt=0, le=3600)

    @model_validator(mode="after")
    def _fields_for_action(self) -> Self:
        for name in _REQUIRED.get(self.action, ()):
            if not getattr(self, name):
                raise ValueError(f"action {self.action!r} needs {name!r}")
        limits = (self.max_pending, self.max_ack_pending)
        if self.action != "consumer_info" and limits != (None, None):
            raise ValueError("max_pending/max_ack_pending apply to action 'consumer_info' only")
        return self


_CLOSE_TIMEOUT_S = 2.0  # a client that cannot even close cleanly is abandoned, not waited for


class _Result(NamedTuple):
    ok: bool
    summary: str
    data: dict[str, Any]


async def _monitor(session: aiohttp.ClientSession, base: str, path: str, tail: TailBuffer) -> tuple[int, Any]:
    """GET a monitoring endpoint: (HTTP status, parsed JSON or None); the body also goes to ``tail``."""
    async with session.get(f"{base}{path}", allow_redirects=False) as resp:
        tail.feed(f"GET {path} -> {resp.status}\n".encode())
        body = await read_body(resp, tail)
        tail.feed(b"\n")
        try:
            return resp.status, json.loads(body) if body else None
        except ValueError:
            return resp.status, None


async def _health(spec: Spec, base: str, session: aiohttp.ClientSession, tail: TailBuffer) -> _Result:
    status, healthz = await _monitor(session, base, "/healthz", tail)
    data: dict[str, Any] = {"healthz": healthz, "healthz_status": status}
    healthy = status == 200 and isinstance(healthz, dict) and healthz.get("status") == "ok"
    if not healthy:
        error = healthz.get("error") if isinstance(healthz, dict) else None
        return _Result(False, f"/healthz answered {status}: {error or healthz}", data)
    if not spec.jetstream:
        return _Result(True, "/healthz ok", data)
    # /healthz (even with js-enabled-only=true) says ok on a server whose JetStream is off; /jsz tells.
    status, jsz = await _monitor(session, base, "/jsz", tail)
    enabled = status == 200 and isinstance(jsz, dict) and not jsz.get("disabled", False)
    data["jetstream_enabled"] = enabled
    if not enabled:
        return _Result(False, f"/healthz ok but JetStream is disabled (/jsz answered {status})", data)
    data["jetstream"] = {k: jsz.get(k) for k in ("streams", "consumers", "messages", "bytes")}
    return _Result(True, f"/healthz ok, JetStream enabled ({jsz.get('streams')} streams)", data)


def _consumer_state(detail: Mapping[str, Any]) -> dict[str, Any]:
    fields = ("num_pending", "num_ack_pending", "num_redelivered", "num_waiting")
    return {k: detail.get(k, 0) for k in fields}


async def _jsz(spec: Spec, base: str, session: aiohttp.ClientSession, tail: TailBuffer) -> _Result:
    status, jsz = await _monitor(session, base, "/jsz?consumers=true", tail)
    if status != 200 or not isinstance(jsz, dict):
        return _Result(False, f"/jsz answered {status}", {})
    if jsz.get("disabled"):
        return _Result(False, "JetStream is disabled", {"disabled": True})
    streams: dict[str, Any] = {}
    for account in jsz.get("account_details") or []:
        for stream in account.get("stream_detail") or []:
            consumers = {c["name"]: _consumer_state(c) for c in stream.get("consumer_detail") or []}
            streams[stream["name"]] = {**stream.get("state", {}), "consumers": consumers}
    data: dict[str, Any] = {
        "disabled": False,
        "totals": {k: jsz.get(k) for k in ("streams", "consumers", "messages", "bytes")},
        "streams": streams,
    }
    if spec.stream is not None and spec.stream not in streams:
        return _Result(False, f"stream {spec.stream!r} not found in /jsz", data)
    if spec.stream is not None and spec.consumer is not None:
        if spec.consumer not in streams[spec.stream]["consumers"]:
            return _Result(False, f"consumer {spec.stream}/{spec.consumer} not found in /jsz", data)
        state = streams[spec.stream]["consumers"][spec.consumer]
        return _Result(True, f"{spec.stream}/{spec.consumer}: {state['num_pending']} pending", data)
    totals = data["totals"]
    return _Result(True, f"{totals['streams']} streams, {totals['messages']} messages", data)


async def _monitoring(spec: Spec, ctx: StepContext, tail: TailBuffer) -> _Result:
    base = (spec.monitor_url or ctx.nats_monitor_url).rstrip("/")
    async with aiohttp.ClientSession() as session:
        if spec.action == "health":
            return await _health(spec, base, session, tail)
        if spec.action == "jsz":
            return await _jsz(spec, base, session, tail)
        status, varz = await _monitor(session, base, "/varz", tail)
        if status != 200 or not isinstance(varz, dict):
            return _Result(False, f"/varz answered {status}", {})
        summary = f"nats-server {varz.get('version')}, {varz.get('connections')} connections"
        return _Result(True, summary, {"varz": varz})


async def _consumer_info(spec: Spec, js: JetStreamContext) -> _Result:
    assert spec.stream is not None and spec.consumer is not None  # enforced by the Spec validator
    info = await js.consumer_info(spec.stream, spec.consumer)
    data: dict[str, Any] = {
        "stream": spec.stream,
        "consumer": spec.consumer,
        "num_pending": info.num_pending,
        "num_ack_pending": info.num_ack_pending,
        "num_redelivered": info.num_redelivered,
        "num_waiting": info.num_waiting,
        "delivered_stream_seq": info.delivered.stream_seq if info.delivered else None,
        "ack_floor_stream_seq": info.ack_floor.stream_seq if info.ack_floor else None,
    }
    summary = (
        f"{spec.stream}/{spec.consumer}: {info.num_pending} pending, {info.num_ack_pending} awaiting ack, "
        f"{info.num_redelivered} redelivered"
    )
    over = [
        f"{name} {data[name]} > {limit}"
        for name, limit in (("num_pending", spec.max_pending), ("num_ack_pending", spec.max_ack_pending))
        if limit is not None and (data[name] or 0) > limit
    ]
    return _Result(not over, summary + (f" ({', '.join(over)})" if over else ""), data)


async def _client_action(spec: Spec, ctx: StepContext) -> _Result:
    url = spec.url or ctx.nats_url
    seen: list[Exception] = []

    async def remember(exc: Exception) -> None:
        # Instead of nats-py's default callback, which logs every failure: ours goes in the outcome.
        seen.append(exc)

    # One-shot use: a failed connect is the answer. nats-py's connect loop only ends after the server
    # has failed more than max_reconnect_attempts times, so that is 1 with no wait: two quick tries.
    try:
        nc = await nats.connect(
            url,
            connect_timeout=max(1, math.ceil(spec.timeout)),
            allow_reconnect=False,
            max_reconnect_attempts=1,
            reconnect_time_wait=0,
            error_cb=remember,
        )
    except nats.errors.NoServersError:
        if not seen:
            raise
        raise seen[-1] from None  # the real reason (refused, timed out) rather than "no servers"
    try:
        js = nc.jetstream(timeout=spec.timeout)
        if spec.action == "consumer_info":
            return await _consumer_info(spec, js)
        if spec.action == "publish":
            assert spec.subject is not None  # enforced by the Spec validator
            payload = spec.payload.encode()
            data: dict[str, Any] = {"subject": spec.subject, "bytes": len(payload)}
            if not spec.ack:
                await nc.publish(spec.subject, payload)
                await nc.flush(timeout=max(1, math.ceil(spec.timeout)))
                return _Result(True, f"published {len(payload)} bytes to {spec.subject}", data)
            ack = await js.publish(spec.subject, payload)
            data.update(stream=ack.stream, seq=ack.seq)
            return _Result(True, f"published to {spec.subject}: stream {ack.stream} seq {ack.seq}", data)
        assert spec.stream is not None  # purge_stream; enforced by the Spec validator
        before = (await js.stream_info(spec.stream)).state.messages
        await js.purge_stream(spec.stream)
        after = (await js.stream_info(spec.stream)).state.messages
        data = {"stream": spec.stream, "messages_before": before, "messages_after": after}
        return _Result(True, f"purged stream {spec.stream}: {before} -> {after} messages", data)
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(nc.close(), _CLOSE_TIMEOUT_S)


async def run(spec: Spec, ctx: StepContext) -> StepOutcome:
    started = time.monotonic()
    tail = TailBuffer(ctx.output_limit)
    monitoring = spec.action in ("health", "varz", "jsz")
    where = (spec.monitor_url or ctx.nats_monitor_url) if monitoring else (spec.url or ctx.nats_url)
    status = "failed"
    try:
        async with asyncio.timeout(spec.timeout):
            result = await (_monitoring(spec, ctx, tail) if monitoring else _client_action(spec, ctx))
        status = "ok" if result.ok else "failed"
    except TimeoutError:  # also nats-py's request timeouts
        result, status = _Result(False, f"no answer within {spec.timeout:g}s", {}), "timeout"
    except nats.js.errors.APIError as exc:
        result = _Result(False, f"JetStream: {exc.description or exc}", {"api_error_code": exc.err_code})
    except nats.errors.NoRespondersError:
        result = _Result(False, "JetStream is not enabled (no responders)", {})
    except ValueError as exc:  # nats-py refuses stream/consumer names that are not valid
        result, status = _Result(False, f"invalid request: {exc}", {}), "error"
    except (aiohttp.ClientError, nats.errors.Error, OSError) as exc:
        result = _Result(False, f"cannot reach NATS at {where}: {reason(exc)}", {})
    return StepOutcome(
        ok=result.ok,
        status=status,
        summary=f"nats {spec.action}: {result.summary}",
        output=tail.text(),
        data=result.data,
        duration_s=time.monotonic() - started,
    )
