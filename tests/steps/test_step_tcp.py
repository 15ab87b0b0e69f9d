"""``tcp`` step: the runbook's ``nc -zv localhost 9000``, against real sockets on loopback."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator

import pytest
from support.realprocs import free_port

from service.steps import StepContext
from service.steps.tcp import Spec, run

CTX = StepContext(execution_id="ex-tcp")


@pytest.fixture
def listening() -> Iterator[socket.socket]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    try:
        yield sock
    finally:
        sock.close()


async def test_open_port(listening: socket.socket) -> None:
    port = listening.getsockname()[1]
    out = await run(Spec(type="tcp", port=port), CTX)
    assert (out.ok, out.status) == (True, "ok")
    assert out.summary == f"127.0.0.1:{port}: connection accepted"
    assert out.data["open"] is True


async def test_closed_port_is_refused() -> None:
    port = free_port()
    out = await run(Spec(type="tcp", host="127.0.0.1", port=port), CTX)
    assert (out.ok, out.status) == (False, "failed")
    assert out.summary == f"127.0.0.1:{port}: Connection refused"


async def test_accepting_nothing_times_out(monkeypatch: pytest.MonkeyPatch) -> None:
    # A connect that never completes (a firewall dropping SYNs) must end at the timeout.
    async def hang(*args: object, **kwargs: object) -> None:
        await asyncio.Event().wait()

    monkeypatch.setattr(asyncio, "open_connection", hang)
    out = await run(Spec(type="tcp", port=9, timeout=0.2), CTX)
    assert (out.ok, out.status) == (False, "timeout")
    assert out.duration_s < 2


def test_port_range() -> None:
    for bad in (0, 65536):
        with pytest.raises(ValueError):
            Spec(type="tcp", port=bad)


def test_port_may_be_a_template_that_renders_to_a_number() -> None:
    from pydantic import ValidationError

    from service.steps.tcp import Spec

    assert Spec.model_validate({"type": "tcp", "port": "{{ params.port }}"}).port == "{{ params.port }}"
    assert Spec.model_validate({"type": "tcp", "port": "4222"}).port == 4222
    assert Spec.model_validate({"type": "tcp", "port": 9000}).port == 9000
    for bad in ("abc", 0, 70000, True, "4222; rm -rf /"):
        with pytest.raises(ValidationError, match="port must be a number"):
            Spec.model_validate({"type": "tcp", "port": bad})
