"""A simulated Beamline Router: the thing the T-OPS-04 runbook repairs, small enough for a laptop.

- TCP on ``--tcp-port`` (the router's 9000): accepts, echoes one read, closes.
- HTTP on ``--http-port`` (the router's 9001): ``/metrics``, ``/healthz`` and a token-protected
  ``/admin/...`` interface standing in for the Erlang console (circuit breakers) plus fault injection.
- A real NATS connection (nats-py, reconnecting forever) with the ``DECIDE`` stream and the durable
  pull consumer ``router_decide_consumer``, consumed in the background in bounded batches.

Run: ``python -m demo.router --tcp-port 9000 --http-port 9001 --nats-url nats://127.0.0.1:4222
--admin-token-file TOKEN``. See docs/demo.md for the metrics and the admin API.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import json
import logging
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal, TypeVar

import aiohttp
import nats
import nats.errors
from aiohttp import web
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from demo.metrics import RouterMetrics
from demo.setup_streams import CONSUMER, PUBLISH_SUBJECT, STREAM, ensure_stream_and_consumer
from demo.simulation import Breaker, BreakerState, ProviderHealth, Simulation

log = logging.getLogger("demo.router")

# Upper bounds for what one admin call or one loop turn may do.
MAX_PUBLISH_PER_CALL = 10_000
MAX_LOAD_RATE = 5_000.0
LOAD_TICK_SECONDS = 0.1
TCP_READ_LIMIT = 4096
TCP_READ_TIMEOUT = 2.0
ERROR_PAUSE_SECONDS = 0.5
# How long one pull request waits on the server; short so a stall takes effect quickly.
FETCH_WAIT_SECONDS = 0.5
SHUTDOWN_CANCEL_ROUNDS = 8
# What the simulated VM holds when healthy, and the most the memory fault may add (a leak; only a
# restart, which starts a new process, or the reset gives it back).
BASE_MEMORY_BYTES = 200 * 1024 * 1024
MAX_LEAK_BYTES = 64 * 1024**3


@dataclass(frozen=True)
class RouterConfig:
    host: str
    tcp_port: int
    http_port: int
    nats_url: str
    nats_monitor_url: str
    admin_token: str
    tenants: tuple[str, ...]
    providers: tuple[str, ...]
    traffic_interval: float
    poll_interval: float
    request_timeout: float
    nats_reconnect_wait: int
    load_rate: float
    consume_rate: float
    fetch_batch: int
    base_latency_ms: float
    failure_threshold: int
    half_open_successes: int
    seed: int


class ConsumerMode(StrEnum):
    RUNNING = "running"
    STALLED = "stalled"  # alive but fetching and acking nothing: pending grows
    CRASHED = "crashed"  # the router_nats_subscriber process is gone


class NatsLink:
    """Owns the NATS client; survives nats-server restarts and the drop/flap fault."""

    def __init__(self, cfg: RouterConfig, metrics: RouterMetrics) -> None:
        self._cfg = cfg
        self._metrics = metrics
        self.nc: NATS | None = None
        self.generation = 0  # bumped for every new client, so users know to re-subscribe
        self.connected = asyncio.Event()
        self.held_down = False
        self._want_up = asyncio.Event()
        self._want_up.set()
        self._drop = asyncio.Event()
        self._errors_in_a_row = 0

    def js(self) -> JetStreamContext | None:
        if self.nc is None or not self.connected.is_set():
            return None
        return self.nc.jetstream(timeout=self._cfg.request_timeout)

    def drop(self, hold: bool) -> None:
        self.held_down = hold
        if hold:
            self._want_up.clear()
        self._drop.set()

    def restore(self) -> None:
        self.held_down = False
        self._want_up.set()

    async def run(self) -> None:
        # Ends only by cancellation at shutdown; each turn needs a drop request to start the next.
        while True:
            await self._want_up.wait()
            self._drop.clear()
            nc = NATS()
            try:
                # max_reconnect_attempts=-1 also retries the first connect until nats-server is up.
                await nc.connect(
                    self._cfg.nats_url,
                    name="beamline-router-sim",
                    connect_timeout=max(1, int(self._cfg.request_timeout)),
                    reconnect_time_wait=self._cfg.nats_reconnect_wait,
                    max_reconnect_attempts=-1,
                    ping_interval=5,
                    max_outstanding_pings=2,
                    disconnected_cb=self._on_disconnected,
                    reconnected_cb=self._on_reconnected,
                    error_cb=self._on_error,
                )
                self._on_connected(nc)
                await self._drop.wait()
            finally:
                self._set_down()
                self.nc = None
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(nc.close(), timeout=self._cfg.request_timeout)
            log.warning("NATS link dropped by fault injection", extra={"held_down": self.held_down})

    def _on_connected(self, nc: NATS) -> None:
        if self.generation > 0:
            self._metrics.nats_reconnects.inc()
        self.generation += 1
        self.nc = nc
        self._errors_in_a_row = 0
        self.connected.set()
        self._metrics.nats_connection_status.set(1)
        log.info("NATS connected", extra={"url": self._cfg.nats_url, "generation": self.generation})

    def _set_down(self) -> None:
        self.connected.clear()
        self._metrics.nats_connection_status.set(0)

    async def _on_disconnected(self) -> None:
        if self.connected.is_set():
            log.error("NATS connection lost", extra={"event": "NATS_CONNECTION_LOST"})
        self._set_down()

    async def _on_reconnected(self) -> None:
        self._metrics.nats_reconnects.inc()
        self._errors_in_a_row = 0
        self.connected.set()
        self._metrics.nats_connection_status.set(1)
        log.info("NATS reconnected", extra={"url": self._cfg.nats_url})

    async def _on_error(self, exc: Exception) -> None:
        # A refused reconnect is reported every attempt: log the first of a run, not each one.
        self._errors_in_a_row += 1
        if self._errors_in_a_row == 1:
            log.warning("NATS error", extra={"error": f"{type(exc).__name__}: {exc}"})


class Router:
    """Everything the app's background tasks and handlers share."""

    def __init__(self, cfg: RouterConfig) -> None:
        self.cfg = cfg
        self.metrics = RouterMetrics()
        self.sim = Simulation(
            cfg.tenants,
            cfg.providers,
            base_latency_ms=cfg.base_latency_ms,
            failure_threshold=cfg.failure_threshold,
            half_open_successes=cfg.half_open_successes,
            seed=cfg.seed,
        )
        self.link = NatsLink(cfg, self.metrics)
        self.consumer_mode = ConsumerMode.RUNNING
        # True once the consumer loop has noticed a stall/crash and holds no fetch open: from then
        # on every new message stays in num_pending (tests wait for this before publishing).
        self.consumer_parked = False
        self._consumer_resumed = asyncio.Event()
        self._consumer_resumed.set()
        self.load_rate = cfg.load_rate
        self.leaked_bytes = 0
        self._init_series()

    def _init_series(self) -> None:
        # Series exist from the first scrape (at 0), so rate() and absent() behave from the start.
        m = self.metrics
        m.nats_connection_status.set(0)
        m.subscriber_up.set(1)
        m.memory_bytes.set(BASE_MEMORY_BYTES)
        for breaker in self.sim.breakers.values():
            m.set_breaker(breaker)
            for state in BreakerState:
                m.breaker_transitions.labels(breaker.tenant, breaker.provider, state.value)
        for provider in self.cfg.providers:
            m.provider_requests.labels(provider)
            m.provider_errors.labels(provider)
            m.provider_latency_p95.labels(provider).set(0)
        for code in ("200", "429", "502", "503"):
            m.requests.labels(code)
        m.consumer_pending.labels(STREAM, CONSUMER).set(0)
        m.consumer_ack_pending.labels(STREAM, CONSUMER).set(0)
        m.messages_processed.labels(STREAM, CONSUMER)

    def leak(self, leaked_bytes: int) -> None:
        self.leaked_bytes = leaked_bytes
        self.metrics.memory_bytes.set(BASE_MEMORY_BYTES + leaked_bytes)

    def set_consumer_mode(self, mode: ConsumerMode) -> None:
        self.consumer_mode = mode
        self.metrics.subscriber_up.set(0 if mode is ConsumerMode.CRASHED else 1)
        if mode is ConsumerMode.RUNNING:
            self._consumer_resumed.set()
        else:
            self._consumer_resumed.clear()

    def force_breaker(self, breaker: Breaker, state: BreakerState) -> None:
        if breaker.state is not state:
            self.metrics.breaker_transitions.labels(breaker.tenant, breaker.provider, state.value).inc()
        breaker.force(state)
        self.metrics.set_breaker(breaker)

    async def traffic_loop(self) -> None:
        while True:
            for outcome in self.sim.tick():
                self.metrics.record(outcome)
            for breaker in self.sim.breakers.values():
                self.metrics.set_breaker(breaker)
            for provider in self.sim.providers.values():
                self.metrics.provider_latency_p95.labels(provider.name).set(provider.p95_ms())
            await asyncio.sleep(self.cfg.traffic_interval)

    async def consume_loop(self) -> None:
        """The router_nats_subscriber: fetch bounded batches, ack each message, stay under the rate."""
        bound_generation = -1
        sub: JetStreamContext.PullSubscription | None = None
        processed = self.metrics.messages_processed.labels(STREAM, CONSUMER)
        while True:
            if not self._consumer_resumed.is_set():
                self.consumer_parked = True
                await self._consumer_resumed.wait()
            self.consumer_parked = False
            await self.link.connected.wait()
            js = self.link.js()
            if js is None:
                continue
            try:
                if sub is None or bound_generation != self.link.generation:
                    # Also recreates the stream and consumer after a clean-state restart wiped them.
                    await ensure_stream_and_consumer(js, self.cfg.request_timeout)
                    sub = await js.pull_subscribe_bind(durable=CONSUMER, stream=STREAM)
                    bound_generation = self.link.generation
                msgs = await sub.fetch(self.cfg.fetch_batch, timeout=FETCH_WAIT_SECONDS)
            except nats.errors.TimeoutError:
                continue  # nothing to do within the fetch window
            except (nats.errors.Error, OSError) as exc:
                log.warning("consumer fetch failed", extra={"error": f"{type(exc).__name__}: {exc}"})
                sub = None
                await asyncio.sleep(ERROR_PAUSE_SECONDS)
                continue
            for msg in msgs:
                if self.consumer_mode is ConsumerMode.RUNNING:
                    await msg.ack()
                    processed.inc()
                else:
                    # Stalled while this fetch was out: hand the message back at once rather
                    # than holding it until ack_wait, so it counts as pending again.
                    await msg.nak()
            await asyncio.sleep(len(msgs) / self.cfg.consume_rate)

    async def poll_loop(self) -> None:
        """Consumer pending from consumer_info and NATS health from its monitoring port."""
        pending = self.metrics.consumer_pending.labels(STREAM, CONSUMER)
        ack_pending = self.metrics.consumer_ack_pending.labels(STREAM, CONSUMER)
        timeout = aiohttp.ClientTimeout(total=self.cfg.request_timeout)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            while True:
                self.metrics.nats_server_up.set(1 if await self._probe_nats(http) else 0)
                js = self.link.js()
                if js is not None:
                    try:
                        info = await js.consumer_info(STREAM, CONSUMER, timeout=self.cfg.request_timeout)
                    except (nats.errors.Error, OSError) as exc:
                        log.debug("consumer_info failed", extra={"error": f"{type(exc).__name__}: {exc}"})
                    else:
                        pending.set(info.num_pending or 0)
                        ack_pending.set(info.num_ack_pending or 0)
                await asyncio.sleep(self.cfg.poll_interval)

    async def _probe_nats(self, http: aiohttp.ClientSession) -> bool:
        try:
            async with http.get(f"{self.cfg.nats_monitor_url}/healthz") as resp:
                body = await resp.json(content_type=None)
                return resp.status == 200 and isinstance(body, dict) and body.get("status") == "ok"
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return False

    async def load_loop(self) -> None:
        """Stands in for the Gateway: publishes to the stream at self.load_rate messages a second."""
        owed = 0.0
        while True:
            await asyncio.sleep(LOAD_TICK_SECONDS)
            if self.load_rate <= 0:
                owed = 0.0
                continue
            owed += self.load_rate * LOAD_TICK_SECONDS
            count = min(int(owed), MAX_PUBLISH_PER_CALL)
            if count == 0:
                continue
            owed -= count
            try:
                await self.publish(count)
            except (nats.errors.Error, OSError, RuntimeError) as exc:
                log.debug("load publish failed", extra={"error": f"{type(exc).__name__}: {exc}"})
                owed = 0.0  # do not build up a burst while NATS is away

    async def publish(self, count: int) -> int:
        nc = self.link.nc
        if nc is None or not self.link.connected.is_set():
            raise RuntimeError("NATS is not connected")
        for i in range(count):
            payload = json.dumps({"seq": i, "ts": time.time(), "request": "decide"}).encode()
            await nc.publish(PUBLISH_SUBJECT, payload)
        await nc.flush(timeout=max(1, int(self.cfg.request_timeout)))
        self.metrics.load_published.inc(count)
        return count


# ---------------------------------------------------------------------------------------- HTTP


ROUTER_KEY = web.AppKey("router", Router)
TASKS_KEY = web.AppKey("tasks", list[asyncio.Task[None]])


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ProviderFault(_Body):
    health: ProviderHealth | None = None
    extra_latency_ms: float | None = Field(default=None, ge=0, le=60_000)


class RateLimitFault(_Body):
    fraction: float = Field(ge=0, le=1)


class ConsumerFault(_Body):
    mode: ConsumerMode


class NatsLinkFault(_Body):
    state: Literal["down", "up", "flap"]


class MemoryFault(_Body):
    leaked_bytes: int = Field(ge=0, le=MAX_LEAK_BYTES)


class LoadRequest(_Body):
    rate: float = Field(ge=0, le=MAX_LOAD_RATE)


class PublishRequest(_Body):
    count: int = Field(ge=1, le=MAX_PUBLISH_PER_CALL)


M = TypeVar("M", bound=_Body)


async def _parse(request: web.Request, model: type[M]) -> M:
    try:
        raw = await request.read()
        return model.model_validate_json(raw or b"{}")
    except ValidationError as exc:
        raise web.HTTPBadRequest(
            text=json.dumps({"error": "invalid body", "detail": json.loads(exc.json())}),
            content_type="application/json",
        ) from exc


def _router(request: web.Request) -> Router:
    return request.app[ROUTER_KEY]


def _breaker(request: web.Request) -> Breaker:
    router = _router(request)
    key = (request.match_info["tenant"], request.match_info["provider"])
    breaker = router.sim.breakers.get(key)
    if breaker is None:
        known = sorted(f"{t}/{p}" for t, p in router.sim.breakers)
        raise web.HTTPNotFound(
            text=json.dumps({"error": f"no circuit breaker for {key[0]}/{key[1]}", "known": known}),
            content_type="application/json",
        )
    return breaker


@web.middleware
async def admin_auth(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    if request.path.startswith("/admin/"):
        expected = f"Bearer {_router(request).cfg.admin_token}".encode()
        given = request.headers.get("Authorization", "").encode()
        if not hmac.compare_digest(given, expected):
            raise web.HTTPUnauthorized(
                text=json.dumps({"error": "admin token missing or wrong"}),
                content_type="application/json",
                headers={"WWW-Authenticate": "Bearer"},
            )
    return await handler(request)


async def healthz(request: web.Request) -> web.Response:
    router = _router(request)
    return web.json_response(
        {"status": "ok", "nats_connected": router.link.connected.is_set(), "consumer": router.consumer_mode}
    )


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(_router(request).metrics.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def breaker_status(request: web.Request) -> web.Response:
    return web.json_response(_breaker(request).status())


async def breaker_force_recovery(request: web.Request) -> web.Response:
    breaker = _breaker(request)
    _router(request).force_breaker(breaker, BreakerState.CLOSED)
    log.warning("circuit breaker forced closed", extra=breaker.status())
    return web.json_response(breaker.status())


async def breaker_force_half_open(request: web.Request) -> web.Response:
    breaker = _breaker(request)
    _router(request).force_breaker(breaker, BreakerState.HALF_OPEN)
    log.warning("circuit breaker forced half_open", extra=breaker.status())
    return web.json_response(breaker.status())


async def breakers_list(request: web.Request) -> web.Response:
    return web.json_response([b.status() for b in _router(request).sim.breakers.values()])


async def fault_open_breaker(request: web.Request) -> web.Response:
    breaker = _breaker(request)
    _router(request).force_breaker(breaker, BreakerState.OPEN)
    return web.json_response(breaker.status())


async def fault_provider(request: web.Request) -> web.Response:
    router = _router(request)
    name = request.match_info["provider"]
    provider = router.sim.providers.get(name)
    if provider is None:
        raise web.HTTPNotFound(
            text=json.dumps({"error": f"no provider {name}", "known": sorted(router.sim.providers)}),
            content_type="application/json",
        )
    body = await _parse(request, ProviderFault)
    if body.health is not None:
        provider.health = body.health
    if body.extra_latency_ms is not None:
        provider.extra_latency_ms = body.extra_latency_ms
    return web.json_response({"health": provider.health.value, "extra_latency_ms": provider.extra_latency_ms})


async def fault_rate_limit(request: web.Request) -> web.Response:
    router = _router(request)
    router.sim.rate_limit_fraction = (await _parse(request, RateLimitFault)).fraction
    return web.json_response(_faults(router))


async def fault_consumer(request: web.Request) -> web.Response:
    router = _router(request)
    router.set_consumer_mode((await _parse(request, ConsumerFault)).mode)
    return web.json_response(_faults(router))


async def fault_nats_link(request: web.Request) -> web.Response:
    router = _router(request)
    state = (await _parse(request, NatsLinkFault)).state
    if state == "up":
        router.link.restore()
    else:
        router.link.drop(hold=state == "down")
    return web.json_response(_faults(router))


async def fault_memory(request: web.Request) -> web.Response:
    router = _router(request)
    router.leak((await _parse(request, MemoryFault)).leaked_bytes)
    return web.json_response(_faults(router))


async def fault_reset(request: web.Request) -> web.Response:
    router = _router(request)
    router.sim.reset_faults()
    router.leak(0)
    for breaker in router.sim.breakers.values():
        router.metrics.set_breaker(breaker)
    router.set_consumer_mode(ConsumerMode.RUNNING)
    router.link.restore()
    router.load_rate = 0.0
    return web.json_response(_faults(router))


async def faults_show(request: web.Request) -> web.Response:
    return web.json_response(_faults(_router(request)))


async def load_set(request: web.Request) -> web.Response:
    router = _router(request)
    router.load_rate = (await _parse(request, LoadRequest)).rate
    return web.json_response(_faults(router))


async def publish(request: web.Request) -> web.Response:
    router = _router(request)
    count = (await _parse(request, PublishRequest)).count
    try:
        published = await router.publish(count)
    except (nats.errors.Error, OSError, RuntimeError) as exc:
        raise web.HTTPServiceUnavailable(
            text=json.dumps({"error": f"publish failed: {type(exc).__name__}: {exc}"}),
            content_type="application/json",
        ) from exc
    return web.json_response({"published": published, "subject": PUBLISH_SUBJECT})


def _faults(router: Router) -> dict[str, Any]:
    return {
        "providers": {
            p.name: {"health": p.health.value, "extra_latency_ms": p.extra_latency_ms}
            for p in router.sim.providers.values()
        },
        "rate_limit_fraction": router.sim.rate_limit_fraction,
        "consumer": router.consumer_mode.value,
        "consumer_parked": router.consumer_parked,
        "nats_link": "held_down" if router.link.held_down else "normal",
        "nats_connected": router.link.connected.is_set(),
        "load_rate": router.load_rate,
        "leaked_bytes": router.leaked_bytes,
    }


async def _handle_tcp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    # Port 9000 only has to accept (the runbook checks it with `nc -zv`); echo one read for probes.
    try:
        data = await asyncio.wait_for(reader.read(TCP_READ_LIMIT), timeout=TCP_READ_TIMEOUT)
        if data:
            writer.write(data)
            await asyncio.wait_for(writer.drain(), timeout=TCP_READ_TIMEOUT)
    except (TimeoutError, ConnectionError):
        pass
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await asyncio.wait_for(writer.wait_closed(), timeout=TCP_READ_TIMEOUT)


async def _background(app: web.Application) -> AsyncIterator[None]:
    router = app[ROUTER_KEY]
    tcp = await asyncio.start_server(_handle_tcp, router.cfg.host, router.cfg.tcp_port)
    tasks = [
        asyncio.create_task(coro, name=name)
        for name, coro in (
            ("nats-link", router.link.run()),
            ("traffic", router.traffic_loop()),
            ("consumer", router.consume_loop()),
            ("poll", router.poll_loop()),
            ("load", router.load_loop()),
        )
    ]
    app[TASKS_KEY] = tasks
    log.info(
        "router started",
        extra={
            "tcp_port": router.cfg.tcp_port,
            "http_port": router.cfg.http_port,
            "nats_url": router.cfg.nats_url,
        },
    )
    yield
    tcp.close()
    # nats-py swallows a CancelledError that lands inside some of its calls (a fetch, a close), so
    # a loop can survive one cancel: cancel again, a bounded number of times, until all have ended.
    for _ in range(SHUTDOWN_CANCEL_ROUNDS):
        alive = [t for t in tasks if not t.done()]
        if not alive:
            break
        for task in alive:
            task.cancel()
        await asyncio.wait(alive, timeout=0.25)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(tcp.wait_closed(), timeout=2.0)
    log.info("router stopped")


def create_app(cfg: RouterConfig) -> web.Application:
    app = web.Application(middlewares=[admin_auth], client_max_size=64 * 1024)
    app[ROUTER_KEY] = Router(cfg)
    app.cleanup_ctx.append(_background)
    cb = "/admin/circuit_breaker/{tenant}/{provider}"
    app.add_routes(
        [
            web.get("/healthz", healthz),
            web.get("/metrics", metrics),
            web.get("/admin/circuit_breakers", breakers_list),
            web.get(f"{cb}/status", breaker_status),
            web.post(f"{cb}/force_recovery", breaker_force_recovery),
            web.post(f"{cb}/force_recovery_to_half_open", breaker_force_half_open),
            web.get("/admin/faults", faults_show),
            web.post("/admin/faults/reset", fault_reset),
            web.post("/admin/faults/circuit_breaker/{tenant}/{provider}/open", fault_open_breaker),
            web.post("/admin/faults/provider/{provider}", fault_provider),
            web.post("/admin/faults/rate_limit", fault_rate_limit),
            web.post("/admin/faults/consumer", fault_consumer),
            web.post("/admin/faults/nats_link", fault_nats_link),
            web.post("/admin/faults/memory", fault_memory),
            web.post("/admin/load", load_set),
            web.post("/admin/publish", publish),
        ]
    )
    return app


class _JsonFormatter(logging.Formatter):
    _STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None)))

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update({k: v for k, v in vars(record).items() if k not in self._STANDARD})
        return json.dumps(entry, default=str)


def _csv(value: str) -> tuple[str, ...]:
    items = tuple(v.strip() for v in value.split(",") if v.strip())
    if not items:
        raise argparse.ArgumentTypeError("expected a comma-separated list")
    return items


def parse_args(argv: list[str] | None) -> RouterConfig:
    p = argparse.ArgumentParser(prog="python -m demo.router", description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1", help="bind address (keep loopback outside a container)")
    p.add_argument("--tcp-port", type=int, default=9000)
    p.add_argument("--http-port", type=int, default=9001)
    p.add_argument("--nats-url", default="nats://127.0.0.1:4222")
    p.add_argument("--nats-monitor-url", default="http://127.0.0.1:8222")
    p.add_argument("--admin-token-file", type=Path, required=True)
    p.add_argument("--tenants", type=_csv, default=("tenant_a", "tenant_b"))
    p.add_argument("--providers", type=_csv, default=("openai", "anthropic"))
    p.add_argument("--traffic-interval", type=float, default=0.05, help="seconds between simulated requests")
    p.add_argument("--poll-interval", type=float, default=0.5, help="seconds between NATS polls")
    p.add_argument("--request-timeout", type=float, default=2.0, help="seconds, every NATS/HTTP call")
    p.add_argument("--nats-reconnect-wait", type=int, default=1, help="seconds between reconnect attempts")
    p.add_argument("--load-rate", type=float, default=0.0, help="messages/s published to the stream")
    p.add_argument("--consume-rate", type=float, default=200.0, help="max messages/s the consumer acks")
    p.add_argument("--fetch-batch", type=int, default=50)
    p.add_argument("--base-latency-ms", type=float, default=80.0)
    p.add_argument("--failure-threshold", type=int, default=5, help="failures in a row that open a breaker")
    p.add_argument("--half-open-successes", type=int, default=3, help="probe successes that close a breaker")
    p.add_argument("--seed", type=int, default=1)
    a = p.parse_args(argv)
    try:
        token = a.admin_token_file.read_text(encoding="utf-8").strip()
    except OSError as exc:
        p.error(f"cannot read --admin-token-file: {exc}")
    if len(token) < 8:
        p.error(f"admin token in {a.admin_token_file} is shorter than 8 characters")
    if not 0 <= a.load_rate <= MAX_LOAD_RATE:
        p.error(f"--load-rate must be between 0 and {MAX_LOAD_RATE}")
    for name in ("traffic_interval", "poll_interval", "request_timeout", "consume_rate"):
        if getattr(a, name) <= 0:
            p.error(f"--{name.replace('_', '-')} must be positive")
    if not 1 <= a.fetch_batch <= 1000:
        p.error("--fetch-batch must be between 1 and 1000")
    return RouterConfig(
        host=a.host,
        tcp_port=a.tcp_port,
        http_port=a.http_port,
        nats_url=a.nats_url,
        nats_monitor_url=a.nats_monitor_url.rstrip("/"),
        admin_token=token,
        tenants=a.tenants,
        providers=a.providers,
        traffic_interval=a.traffic_interval,
        poll_interval=a.poll_interval,
        request_timeout=a.request_timeout,
        nats_reconnect_wait=a.nats_reconnect_wait,
        load_rate=a.load_rate,
        consume_rate=a.consume_rate,
        fetch_batch=a.fetch_batch,
        base_latency_ms=a.base_latency_ms,
        failure_threshold=a.failure_threshold,
        half_open_successes=a.half_open_successes,
        seed=a.seed,
    )


def main(argv: list[str] | None = None) -> None:
    cfg = parse_args(argv)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter())
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    # run_app turns SIGTERM/SIGINT into a graceful shutdown that runs the cleanup context above.
    web.run_app(create_app(cfg), host=cfg.host, port=cfg.http_port, print=None, shutdown_timeout=5.0, access_log=None)


if __name__ == "__main__":
    main()
