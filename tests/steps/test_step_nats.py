"""``nats`` step against a real nats-server with JetStream."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import nats
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from support.realprocs import NatsServer, RealProcesses, http_get

from service.steps import StepContext
from service.steps.nats import Spec, run

STREAM, CONSUMER = "ORDERS", "worker"
PUBLISHED, FETCHED = 10, 3  # so 7 pending and 3 awaiting ack


def ctx_for(server: NatsServer) -> StepContext:
    return StepContext(execution_id="ex-nats", nats_url=server.client_url, nats_monitor_url=server.monitor_url)


@pytest.fixture
async def client(nats_server: NatsServer) -> AsyncIterator[Client]:
    nc = await nats.connect(nats_server.client_url, connect_timeout=5, allow_reconnect=False)
    try:
        yield nc
    finally:
        await nc.close()


@pytest.fixture
async def backlog(client: Client) -> Client:
    """ORDERS with 10 messages and a durable pull consumer that took 3 and acked none."""
    js = client.jetstream(timeout=5)
    await js.add_stream(name=STREAM, subjects=["orders.>"])
    for i in range(PUBLISHED):
        await js.publish(f"orders.{i % 2}", f"order {i}".encode())
    sub = await js.pull_subscribe("orders.>", durable=CONSUMER, stream=STREAM)
    msgs = await sub.fetch(FETCHED, timeout=5)
    assert len(msgs) == FETCHED
    return client


async def test_consumer_info_reports_exact_backlog(nats_server: NatsServer, backlog: Client) -> None:
    spec = Spec(type="nats", action="consumer_info", stream=STREAM, consumer=CONSUMER)
    out = await run(spec, ctx_for(nats_server))
    assert out.ok, out.summary
    assert out.data["num_pending"] == PUBLISHED - FETCHED
    assert out.data["num_ack_pending"] == FETCHED
    assert out.data["num_redelivered"] == 0
    assert out.data["delivered_stream_seq"] == FETCHED
    assert "7 pending, 3 awaiting ack" in out.summary


@pytest.mark.parametrize(("limit", "ok"), [(7, True), (6, False)])
async def test_consumer_info_max_pending(nats_server: NatsServer, backlog: Client, limit: int, ok: bool) -> None:
    spec = Spec(type="nats", action="consumer_info", stream=STREAM, consumer=CONSUMER, max_pending=limit)
    out = await run(spec, ctx_for(nats_server))
    assert (out.ok, out.status) == (ok, "ok" if ok else "failed")
    if not ok:
        assert "num_pending 7 > 6" in out.summary


async def test_consumer_info_unknown_consumer(nats_server: NatsServer, backlog: Client) -> None:
    spec = Spec(type="nats", action="consumer_info", stream=STREAM, consumer="nobody")
    out = await run(spec, ctx_for(nats_server))
    assert (out.ok, out.status) == (False, "failed")
    assert "consumer not found" in out.summary


async def test_invalid_stream_name_is_an_error(nats_server: NatsServer) -> None:
    spec = Spec(type="nats", action="consumer_info", stream="ORD.ERS", consumer=CONSUMER)
    out = await run(spec, ctx_for(nats_server))
    assert (out.ok, out.status) == (False, "error")


async def test_jsz_puts_stream_and_consumer_state_in_data(nats_server: NatsServer, backlog: Client) -> None:
    spec = Spec(type="nats", action="jsz", stream=STREAM, consumer=CONSUMER)
    out = await run(spec, ctx_for(nats_server))
    assert out.ok, out.summary
    stream = out.data["streams"][STREAM]
    assert stream["messages"] == PUBLISHED
    assert stream["consumers"][CONSUMER]["num_pending"] == PUBLISHED - FETCHED
    assert stream["consumers"][CONSUMER]["num_ack_pending"] == FETCHED
    missing = await run(Spec(type="nats", action="jsz", stream="NOPE"), ctx_for(nats_server))
    assert not missing.ok and "NOPE" in missing.summary


async def test_varz(nats_server: NatsServer) -> None:
    out = await run(Spec(type="nats", action="varz"), ctx_for(nats_server))
    assert out.ok, out.summary
    assert out.data["varz"]["port"] == nats_server.port
    assert out.data["varz"]["version"].startswith("2.")


async def test_health_ok_then_connection_refused_when_stopped(nats_server: NatsServer) -> None:
    ctx = ctx_for(nats_server)
    healthy = await run(Spec(type="nats", action="health"), ctx)
    assert healthy.ok, healthy.summary
    assert healthy.data["jetstream_enabled"] is True

    await asyncio.to_thread(nats_server.stop)
    for action in ("health", "varz"):
        down = await run(Spec(type="nats", action=action), ctx)
        assert (down.ok, down.status) == (False, "failed")
        assert "Connection refused" in down.summary, down.summary
    info = await run(Spec(type="nats", action="consumer_info", stream=STREAM, consumer=CONSUMER), ctx)
    assert (info.ok, info.status) == (False, "failed")
    assert "Connection refused" in info.summary, info.summary

    await asyncio.to_thread(nats_server.start)
    assert (await run(Spec(type="nats", action="health"), ctx)).ok


async def test_health_sees_jetstream_disabled(real_processes: RealProcesses) -> None:
    server = real_processes.nats(jetstream=False)
    # The trap this check exists for: the JetStream-only health probe says ok with JetStream off.
    assert http_get(server.monitor_url + "/healthz?js-enabled-only=true") == (200, b'{"status":"ok"}')
    ctx = ctx_for(server)
    out = await run(Spec(type="nats", action="health"), ctx)
    assert (out.ok, out.status) == (False, "failed")
    assert "JetStream is disabled" in out.summary
    plain = await run(Spec(type="nats", action="health", jetstream=False), ctx)
    assert plain.ok, plain.summary
    info = await run(Spec(type="nats", action="consumer_info", stream=STREAM, consumer=CONSUMER, timeout=3), ctx)
    assert (info.ok, info.status) == (False, "failed"), info.summary
    assert "JetStream" in info.summary


async def test_publish_core_and_jetstream(nats_server: NatsServer, backlog: Client) -> None:
    received: asyncio.Queue[bytes] = asyncio.Queue()

    async def on_msg(msg: Msg) -> None:
        await received.put(msg.data)

    await backlog.subscribe("remediator.test", cb=on_msg)
    await backlog.flush()
    payload = "hello; $(touch /tmp/x) \u00e9"
    out = await run(
        Spec(type="nats", action="publish", subject="remediator.test", payload=payload), ctx_for(nats_server)
    )
    assert out.ok, out.summary
    assert await asyncio.wait_for(received.get(), 5) == payload.encode()

    acked = await run(
        Spec(type="nats", action="publish", subject="orders.9", payload="late", ack=True), ctx_for(nats_server)
    )
    assert acked.ok, acked.summary
    assert (acked.data["stream"], acked.data["seq"]) == (STREAM, PUBLISHED + 1)


async def test_purge_stream_empties_it(nats_server: NatsServer, backlog: Client) -> None:
    out = await run(Spec(type="nats", action="purge_stream", stream=STREAM), ctx_for(nats_server))
    assert out.ok, out.summary
    assert (out.data["messages_before"], out.data["messages_after"]) == (PUBLISHED, 0)
    info = await backlog.jetstream(timeout=5).stream_info(STREAM)
    assert info.state.messages == 0


def test_spec_requires_fields_per_action() -> None:
    with pytest.raises(ValueError, match="needs 'consumer'"):
        Spec(type="nats", action="consumer_info", stream=STREAM)
    with pytest.raises(ValueError, match="needs 'stream'"):
        Spec(type="nats", action="purge_stream")
    with pytest.raises(ValueError, match="'consumer_info' only"):
        Spec(type="nats", action="health", max_pending=1)
