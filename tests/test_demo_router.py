"""The simulated Beamline Router (demo/router.py) against a real nats-server.

The router runs as its own process on free loopback ports, as the runbook scripts and the
end-to-end tests run it; everything is observed through its /metrics and admin API.
"""

from __future__ import annotations

import json
import socket
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from support.realprocs import LOOPBACK, NatsServer, RealProcess, RealProcesses, free_port, http_get

from demo.processes import poll

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "test-admin-token-0123456789"
WAIT_S = 15.0
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


class Router:
    def __init__(self, proc: RealProcess, http_port: int, tcp_port: int) -> None:
        self.proc = proc
        self.url = f"http://{LOOPBACK}:{http_port}"
        self.tcp_port = tcp_port

    def samples(self) -> Samples:
        status, body = http_get(self.url + "/metrics")
        assert status == 200
        return {
            (s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(body.decode())
            for s in family.samples
        }

    def value(self, name: str, **labels: str) -> float:
        return self.samples()[(name, frozenset(labels.items()))]

    def admin(self, method: str, path: str, body: object = None, token: str | None = TOKEN) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method)
        if token is not None:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with _DIRECT.open(request, timeout=5) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())

    def wait_for(self, what: str, check: Callable[[], bool], timeout: float = WAIT_S) -> None:
        poll(check, timeout, what)


@pytest.fixture
def start_router(
    real_processes: RealProcesses, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Callable[[NatsServer], Router]:
    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # `python -m demo.router` from any cwd
    token_file = tmp_path / "admin.token"
    token_file.write_text(TOKEN + "\n")

    def start(nats: NatsServer) -> Router:
        http_port, tcp_port = free_port(), free_port()
        argv = [
            sys.executable,
            "-m",
            "demo.router",
            f"--tcp-port={tcp_port}",
            f"--http-port={http_port}",
            f"--nats-url={nats.client_url}",
            f"--nats-monitor-url={nats.monitor_url}",
            f"--admin-token-file={token_file}",
            "--traffic-interval=0.02",
            "--poll-interval=0.1",
        ]
        proc = RealProcess("router", argv, tmp_path / "router.log", f"http://{LOOPBACK}:{http_port}/healthz")
        real_processes.started.append(proc)  # stopped by PID (and its log attached) like the servers
        proc.start()
        router = Router(proc, http_port, tcp_port)
        router.wait_for("NATS connected", lambda: router.value("router_nats_connection_status") == 1)
        return router

    return start


@pytest.fixture
def router(nats_server: NatsServer, start_router: Callable[[NatsServer], Router]) -> Router:
    return start_router(nats_server)


def test_metrics_carry_the_runbook_names(router: Router) -> None:
    router.wait_for("first consumer poll and NATS probe", lambda: router.value("router_nats_server_up") == 1)
    samples = router.samples()
    names = {name for name, _ in samples}
    assert {
        "router_nats_connection_status",
        "router_nats_reconnects_total",
        "router_nats_server_up",
        "router_circuit_breaker_state",
        "router_circuit_breaker_transitions_total",
        "router_provider_latency_p95_ms",
        "router_provider_errors_total",
        "router_provider_requests_total",
        "router_requests_total",
        "router_request_duration_seconds_bucket",
        "router_jetstream_consumer_pending",
        "router_jetstream_consumer_ack_pending",
        "router_jetstream_messages_processed_total",
        "router_nats_subscriber_up",
        "router_memory_bytes",
    } <= names
    for tenant in ("tenant_a", "tenant_b"):
        for provider in ("openai", "anthropic"):
            assert (
                samples[("router_circuit_breaker_state", frozenset({"tenant": tenant, "provider": provider}.items()))]
                == 0
            )
    consumer = frozenset({"stream": "DECIDE", "consumer": "router_decide_consumer"}.items())
    assert samples[("router_jetstream_consumer_pending", consumer)] == 0
    assert {"200", "429", "502", "503"} <= {dict(lbl)["code"] for n, lbl in samples if n == "router_requests_total"}
    # Simulated traffic flows: requests are counted and a latency is measured for each provider.
    router.wait_for("traffic", lambda: router.value("router_provider_requests_total", provider="openai") >= 10)
    assert 0 < router.value("router_provider_latency_p95_ms", provider="openai") < 1000


def test_tcp_port_accepts_and_echoes(router: Router) -> None:
    with socket.create_connection((LOOPBACK, router.tcp_port), timeout=5) as sock:
        sock.sendall(b"ping")
        assert sock.recv(16) == b"ping"


def test_admin_requires_the_token(router: Router) -> None:
    path = "/admin/circuit_breaker/tenant_a/openai/force_recovery"
    assert router.admin("POST", path, token=None)[0] == 401
    assert router.admin("POST", path, token="wrong-token-0000000")[0] == 401
    assert router.admin("GET", "/admin/circuit_breaker/tenant_a/openai/status")[0] == 200
    status, body = router.admin("GET", "/admin/circuit_breaker/nobody/openai/status")
    assert status == 404 and "tenant_a/openai" in body["known"]
    assert router.admin("POST", "/admin/faults/rate_limit", {"fraction": 2})[0] == 400


def test_half_open_breaker_closes_when_the_provider_is_healthy(router: Router) -> None:
    base = "/admin/circuit_breaker/tenant_a/openai"
    status, body = router.admin("POST", "/admin/faults/circuit_breaker/tenant_a/openai/open")
    assert status == 200 and body["state"] == "open"
    assert router.value("router_circuit_breaker_state", tenant="tenant_a", provider="openai") == 1
    # Open stays open on its own (the runbook's "provider recovered but breaker still open").
    sent = router.value("router_provider_requests_total", provider="openai")
    router.wait_for(
        "more traffic", lambda: router.value("router_provider_requests_total", provider="openai") > sent + 10
    )
    assert router.admin("GET", f"{base}/status")[1]["state"] == "open"
    before_503 = router.value("router_requests_total", code="503")
    assert before_503 > 0  # the open breaker fails fast with 503

    status, body = router.admin("POST", f"{base}/force_recovery_to_half_open")
    assert status == 200 and body["state"] == "half_open"
    router.wait_for("breaker closed by probes", lambda: router.admin("GET", f"{base}/status")[1]["state"] == "closed")
    assert router.value("router_circuit_breaker_state", tenant="tenant_a", provider="openai") == 0
    transitions = {
        to: router.value("router_circuit_breaker_transitions_total", tenant="tenant_a", provider="openai", to=to)
        for to in ("open", "half_open", "closed")
    }
    assert transitions == {"open": 1, "half_open": 1, "closed": 1}
    # Other breakers were not touched.
    assert router.value("router_circuit_breaker_state", tenant="tenant_b", provider="openai") == 0


def test_half_open_breaker_reopens_while_the_provider_fails(router: Router) -> None:
    base = "/admin/circuit_breaker/tenant_a/openai"
    status, body = router.admin("POST", "/admin/faults/provider/openai", {"health": "failing"})
    assert status == 200 and body["health"] == "failing"
    router.wait_for("breaker opened by failures", lambda: router.admin("GET", f"{base}/status")[1]["state"] == "open")
    assert router.value("router_provider_errors_total", provider="openai") >= 5
    assert router.value("router_provider_latency_p95_ms", provider="openai") >= 2500

    assert router.admin("POST", f"{base}/force_recovery_to_half_open")[1]["state"] == "half_open"
    router.wait_for(
        "breaker re-opened by a failed probe",
        lambda: (
            router.value("router_circuit_breaker_transitions_total", tenant="tenant_a", provider="openai", to="open")
            == 2
        ),
    )
    assert router.admin("GET", f"{base}/status")[1]["state"] == "open"
    assert router.value("router_circuit_breaker_state", tenant="tenant_a", provider="anthropic") == 0

    # force_recovery closes it; with the provider still failing it opens again by itself.
    assert router.admin("POST", f"{base}/force_recovery")[1]["state"] == "closed"
    router.wait_for(
        "breaker re-opened after forced recovery",
        lambda: (
            router.value("router_circuit_breaker_transitions_total", tenant="tenant_a", provider="openai", to="open")
            == 3
        ),
    )


def test_stalled_consumer_lets_pending_grow_and_recovers(router: Router) -> None:
    pending = {"stream": "DECIDE", "consumer": "router_decide_consumer"}
    assert router.admin("POST", "/admin/publish", {"count": 5})[0] == 200
    router.wait_for("5 processed", lambda: router.value("router_jetstream_messages_processed_total", **pending) == 5)

    assert router.admin("POST", "/admin/faults/consumer", {"mode": "stalled"})[0] == 200
    router.wait_for("consumer parked", lambda: router.admin("GET", "/admin/faults")[1]["consumer_parked"] is True)
    assert router.admin("POST", "/admin/publish", {"count": 40})[1] == {
        "published": 40,
        "subject": "router.decide.request",
    }
    router.wait_for("pending 40", lambda: router.value("router_jetstream_consumer_pending", **pending) == 40)
    assert router.value("router_jetstream_messages_processed_total", **pending) == 5
    assert router.value("router_nats_subscriber_up") == 1  # stalled, not crashed

    assert router.admin("POST", "/admin/faults/consumer", {"mode": "running"})[0] == 200
    router.wait_for(
        "backlog drained", lambda: router.value("router_jetstream_messages_processed_total", **pending) == 45
    )
    router.wait_for("pending 0", lambda: router.value("router_jetstream_consumer_pending", **pending) == 0)

    assert router.admin("POST", "/admin/faults/consumer", {"mode": "crashed"})[0] == 200
    assert router.value("router_nats_subscriber_up") == 0


def test_router_reconnects_after_nats_server_restart(nats_server: NatsServer, router: Router) -> None:
    nats_server.stop()
    router.wait_for("connection status 0", lambda: router.value("router_nats_connection_status") == 0)
    router.wait_for("server probe 0", lambda: router.value("router_nats_server_up") == 0)
    assert router.admin("POST", "/admin/publish", {"count": 1})[0] == 503

    nats_server.start()
    router.wait_for("connection status 1", lambda: router.value("router_nats_connection_status") == 1)
    router.wait_for("server probe 1", lambda: router.value("router_nats_server_up") == 1)
    assert router.value("router_nats_reconnects_total") == 1
    # JetStream works again through the same stream and consumer (the store dir was kept).
    assert router.admin("POST", "/admin/publish", {"count": 3})[0] == 200
    router.wait_for(
        "3 processed after the restart",
        lambda: (
            router.value(
                "router_jetstream_messages_processed_total", stream="DECIDE", consumer="router_decide_consumer"
            )
            == 3
        ),
    )


def test_nats_link_fault_holds_the_link_down_until_restored(router: Router) -> None:
    assert router.admin("POST", "/admin/faults/nats_link", {"state": "down"})[0] == 200
    router.wait_for("status 0", lambda: router.value("router_nats_connection_status") == 0)
    # Held down: the server is fine, the router stays disconnected.
    assert router.value("router_nats_server_up") == 1
    assert router.admin("GET", "/healthz")[1]["nats_connected"] is False
    assert router.admin("POST", "/admin/faults/nats_link", {"state": "up"})[0] == 200
    router.wait_for("status 1", lambda: router.value("router_nats_connection_status") == 1)
    assert router.admin("POST", "/admin/faults/nats_link", {"state": "flap"})[0] == 200
    router.wait_for("second reconnect", lambda: router.value("router_nats_reconnects_total") == 2)
    assert router.value("router_nats_connection_status") == 1


def test_rate_limit_and_latency_faults_show_in_the_metrics(router: Router) -> None:
    limited = router.value("router_requests_total", code="429")
    assert router.admin("POST", "/admin/faults/rate_limit", {"fraction": 1.0})[0] == 200
    router.wait_for("429s", lambda: router.value("router_requests_total", code="429") >= limited + 20)
    assert router.admin("POST", "/admin/faults/rate_limit", {"fraction": 0.0})[0] == 200

    assert router.admin("POST", "/admin/faults/provider/anthropic", {"extra_latency_ms": 3000})[0] == 200
    router.wait_for("p95 over 3s", lambda: router.value("router_provider_latency_p95_ms", provider="anthropic") > 3000)
    # the p95 gauge moves as slow requests start; the histogram counts one once it is answered
    router.wait_for(
        "a request between 2.5s and 10s in the histogram",
        lambda: (
            router.value("router_request_duration_seconds_bucket", le="10.0")
            - router.value("router_request_duration_seconds_bucket", le="2.5")
            > 0
        ),
    )

    status, body = router.admin("POST", "/admin/faults/reset")
    assert status == 200 and body["providers"]["anthropic"]["extra_latency_ms"] == 0


def test_the_memory_fault_leaks_until_reset(router: Router) -> None:
    base = router.value("router_memory_bytes")
    assert base == 200 * 1024 * 1024
    status, body = router.admin("POST", "/admin/faults/memory", {"leaked_bytes": 2 * 1024**3})
    assert status == 200 and body["leaked_bytes"] == 2 * 1024**3
    assert router.value("router_memory_bytes") == base + 2 * 1024**3
    assert router.admin("POST", "/admin/faults/memory", {"leaked_bytes": -1})[0] == 400
    assert router.admin("POST", "/admin/faults/reset")[1]["leaked_bytes"] == 0
    assert router.value("router_memory_bytes") == base


def test_sigterm_stops_the_router_cleanly(router: Router) -> None:
    started = time.monotonic()
    assert router.proc.stop(timeout=10) == 0
    assert time.monotonic() - started < 5
    assert "router stopped" in router.proc.log_tail()
    with pytest.raises(OSError):
        http_get(router.url + "/healthz", timeout=1)


def test_load_generator_publishes_at_a_rate_and_the_consumer_keeps_up(router: Router) -> None:
    consumer = {"stream": "DECIDE", "consumer": "router_decide_consumer"}
    status, body = router.admin("POST", "/admin/load", {"rate": 200})
    assert status == 200 and body["load_rate"] == 200
    router.wait_for("60 published", lambda: router.value("router_demo_load_published_total") >= 60)
    router.wait_for("60 processed", lambda: router.value("router_jetstream_messages_processed_total", **consumer) >= 60)
    assert router.admin("POST", "/admin/load", {"rate": 0})[0] == 200
    published = router.value("router_demo_load_published_total")
    router.wait_for(
        "all processed", lambda: router.value("router_jetstream_messages_processed_total", **consumer) == published
    )
    assert router.value("router_demo_load_published_total") == published  # the generator stopped
    assert router.admin("POST", "/admin/load", {"rate": -1})[0] == 400
