"""The real `remediator serve` under hostile connections: slow requests are cut off, the open-connection
cap keeps `/-/healthy` answering, and a flood of failed accepts costs a few log lines, not thousands."""

from __future__ import annotations

import contextlib
import json
import resource
import socket
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from support.service_proc import ServiceProcess

from demo.processes import poll

# Generous against CI jitter, far below aiohttp's idle timeout (set to 60 s below), which must not be what
# cuts the slow clients off.
READ_TIMEOUT = 2.0
CUT_OFF_WITHIN = READ_TIMEOUT + 3.0
TRICKLE_INTERVAL = 0.25


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[..., ServiceProcess]]:
    started: list[ServiceProcess] = []

    def start_service(server: dict[str, Any], preexec_fn: Callable[[], None] | None = None) -> ServiceProcess:
        service = ServiceProcess(workdir=tmp_path, config={"server": server}, preexec_fn=preexec_fn)
        started.append(service)
        service.start()
        return service

    yield start_service
    for service in started:
        service.stop()


def connect(service: ServiceProcess) -> socket.socket:
    return socket.create_connection(("127.0.0.1", service.port), timeout=5)


def closed_by_server(sock: socket.socket) -> bool:
    """Whether the server closed this connection (without waiting if it did not)."""
    sock.setblocking(False)
    try:
        return sock.recv(4096) == b""
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True
    finally:
        sock.setblocking(True)


def trickle_until_closed(sock: socket.socket, data: bytes, limit: float) -> float:
    """Send ``data`` a byte at a time, TRICKLE_INTERVAL apart; seconds until the server hung up."""
    began = time.monotonic()
    for byte in data:
        if closed_by_server(sock):
            return time.monotonic() - began
        try:
            sock.send(bytes([byte]))
        except (BrokenPipeError, ConnectionResetError):
            return time.monotonic() - began
        if time.monotonic() - began > limit:
            break
        time.sleep(TRICKLE_INTERVAL)  # the pace of the slow client: the behaviour under test
    pytest.fail(f"a client trickling its request was still connected after {limit:g}s")


def healthy(service: ServiceProcess) -> bool:
    with urllib.request.urlopen(f"{service.url}/-/healthy", timeout=3) as response:
        return response.status == 200


def log_lines(service: ServiceProcess, message: str) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in service.logs().splitlines() if line.startswith("{")]
    return [line for line in lines if line["msg"] == message]


SLOW = {"request_read_timeout": READ_TIMEOUT, "keepalive_timeout": 60}
ENDLESS_HEADERS = b"POST /hooks/alertmanager HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 1000


def test_a_client_trickling_its_headers_is_cut_off(start: Callable[..., ServiceProcess]) -> None:
    service = start(SLOW)
    with connect(service) as sock:
        took = trickle_until_closed(sock, ENDLESS_HEADERS, CUT_OFF_WITHIN)
    assert READ_TIMEOUT - 0.5 <= took <= CUT_OFF_WITHIN
    assert healthy(service)
    poll(lambda: bool(log_lines(service, "connection closed: its request did not arrive in time")), 5, "the log")


def test_a_client_trickling_its_body_is_cut_off(start: Callable[..., ServiceProcess]) -> None:
    service = start(SLOW)
    headers = (
        b"POST /api/v1/simulate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 5000\r\n\r\n"
    )
    with connect(service) as sock:
        sock.sendall(headers)  # at once: only the body dawdles
        took = trickle_until_closed(sock, b" " * 5000, CUT_OFF_WITHIN)
    assert took <= CUT_OFF_WITHIN
    assert healthy(service)
    assert "Traceback" not in service.logs()


def test_a_request_that_arrives_in_time_is_served_and_the_connection_kept(
    start: Callable[..., ServiceProcess],
) -> None:
    service = start(SLOW)
    with connect(service) as sock:
        for _ in range(2):  # the second request, on the same connection, after longer than the read timeout
            sock.sendall(b"GET /-/healthy HTTP/1.1\r\nHost: x\r\n\r\n")
            assert sock.recv(4096).startswith(b"HTTP/1.1 200")
            time.sleep(READ_TIMEOUT + 1.5)  # idle, not slow: the read deadline must not apply
        assert not closed_by_server(sock)


def test_idle_connections_past_the_cap_make_room_for_new_ones(start: Callable[..., ServiceProcess]) -> None:
    service = start({"max_connections": 20})
    idle = [connect(service) for _ in range(40)]
    try:
        assert healthy(service)
        # the oldest idle ones were closed to make room; the cap holds
        poll(lambda: closed_by_server(idle[0]), 5, "the oldest idle connection to be closed")
        poll(lambda: sum(not closed_by_server(s) for s in idle) <= 20, 5, "at most 20 connections open")
    finally:
        for sock in idle:
            sock.close()


def begin_request(service: ServiceProcess) -> socket.socket:
    """A connection whose request the server has begun to read: it answered 100 Continue to its headers."""
    sock = connect(service)
    sock.sendall(
        b"POST /hooks/alertmanager HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 100\r\nExpect: 100-continue\r\n\r\n"
    )
    assert sock.recv(4096).startswith(b"HTTP/1.1 100 Continue")
    return sock


def test_past_the_cap_with_none_idle_new_connections_are_closed_at_once(
    start: Callable[..., ServiceProcess],
) -> None:
    service = start({"max_connections": 5, "request_read_timeout": 60})
    busy = [begin_request(service) for _ in range(5)]
    try:
        for _ in range(30):
            with connect(service) as refused:
                poll(lambda: closed_by_server(refused), 5, "a connection past the cap to be closed")
        assert not any(closed_by_server(sock) for sock in busy)
        # thirty refusals, one line (the rest are counted for the next one)
        [line] = log_lines(service, "connection refused: too many open connections, none idle")
        assert line["count"] == 1 and line["max_connections"] == 5
    finally:
        for sock in busy:
            sock.close()


def lower_open_files_limit() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))


def test_the_default_cap_stays_below_a_low_open_files_limit(start: Callable[..., ServiceProcess]) -> None:
    service = start({}, preexec_fn=lower_open_files_limit)
    [accepting] = log_lines(service, "accepting connections")
    assert accepting["open_files_limit"] == 64 and accepting["max_connections"] == 16
    idle = [connect(service) for _ in range(100)]
    try:
        assert healthy(service)
        assert not log_lines(service, "cannot accept connections: out of system resources")
    finally:
        for sock in idle:
            sock.close()


EMFILE = "cannot accept connections: out of system resources"


def test_accept_errors_when_descriptors_run_out_are_logged_once_per_interval(
    start: Callable[..., ServiceProcess],
) -> None:
    # A cap above the limit (warned about at start) lets the descriptors run out: accept fails with EMFILE.
    service = start({"max_connections": 500}, preexec_fn=lower_open_files_limit)
    assert log_lines(
        service,
        "server.max_connections leaves too few of the open-files limit for the store, "
        "steps and outgoing connections: raise the limit (ulimit -n) or lower max_connections",
    )
    idle: list[socket.socket] = []
    try:
        # until accept fails (or the listen backlog is full too, which happens just after)
        with contextlib.suppress(TimeoutError):
            while len(idle) < 100 and not log_lines(service, EMFILE):
                idle.append(socket.create_connection(("127.0.0.1", service.port), timeout=3))
        poll(lambda: bool(log_lines(service, EMFILE)), 5, "accept to fail with EMFILE")
        time.sleep(3)  # a flood's worth of retries: asyncio retries the accept every second
        [line] = log_lines(service, EMFILE)
        assert line["count"] == 1 and line["error"] == "Too many open files"
        assert "out of system resource" not in service.logs().replace(EMFILE, "")
    finally:
        for sock in idle:
            sock.close()
    poll(lambda: healthy(service), 10, "the service to answer once the connections are gone")
