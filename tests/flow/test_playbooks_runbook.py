"""Each shipped playbook (playbooks/*.yaml) run through the real Executor against the simulated router
and a real nats-server, both started by the runbook's own scripts (demo/scripts) on free loopback
ports: outcomes AND side effects (NATS restarted, breaker half-open then closed, nothing purged
without approval, ports back after a clean-state restart, evidence in the reports).

Processes the scripts start are stopped by the PID in their pid files when a test (or the module's
shared stack) ends, pass or fail. Prometheus-backed checks share one Prometheus per module.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import aiohttp
import nats
import pytest
from support.fake_escalation import RecordingEscalation
from support.flow import poll as poll_until_true
from support.realprocs import LOOPBACK, RealProcesses, free_port, require_binary

from demo.processes import pid_alive, stop_pid
from service.clock import SystemClock
from service.flow.executor import Endpoints, Executor, RunRequest
from service.playbooks.loading import load_playbooks
from service.playbooks.params import validate_params
from service.playbooks.playbook import LoadedPlaybook
from service.playbooks.templating import TemplateEngine
from service.store import ExecutionRecord, NewExecution, SQLiteStore

ROOT = Path(__file__).resolve().parent.parent.parent
SCRIPTS = ROOT / "demo" / "scripts"
SCRIPT_TIMEOUT_S = 60
RUN_TIMEOUT_S = 90.0
TERMINAL = {"succeeded", "failed", "escalated", "cancelled", "interrupted"}

PLAYBOOKS: dict[str, LoadedPlaybook] = load_playbooks(
    [(p, str(p.relative_to(ROOT))) for p in sorted((ROOT / "playbooks").glob("*.yaml"))], TemplateEngine()
)


# --- the demo stack, started by the runbook scripts -----------------------------------------------


class Stack:
    """One state dir with its own ports: NATS and one router, driven by demo/scripts."""

    def __init__(self, state: Path, tcp_port: int | None = None, http_port: int | None = None) -> None:
        state.mkdir(parents=True, exist_ok=True)
        self.state = state
        self.nats_port, self.nats_monitor_port = free_port(), free_port()
        self.tcp_port, self.http_port = tcp_port or free_port(), http_port or free_port()
        self.extra: list[Stack] = []

    @property
    def env(self) -> dict[str, str]:
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin") + ":/usr/sbin",
            "HOME": str(self.state),
            "BEAMLINE_STATE_DIR": str(self.state),
            "BEAMLINE_NATS_PORT": str(self.nats_port),
            "BEAMLINE_NATS_MONITOR_PORT": str(self.nats_monitor_port),
            "BEAMLINE_ROUTER_TCP_PORT": str(self.tcp_port),
            "BEAMLINE_ROUTER_HTTP_PORT": str(self.http_port),
            "BEAMLINE_PYTHON": sys.executable,
            "BEAMLINE_START_TIMEOUT": "20",
        }

    def script(self, name: str, **env: str) -> str:
        result = subprocess.run(
            [str(SCRIPTS / name)],
            env={**self.env, **env},
            cwd=self.state,
            capture_output=True,
            text=True,
            timeout=SCRIPT_TIMEOUT_S,
            check=False,
        )
        assert result.returncode == 0, f"{name}: rc={result.returncode}\n{result.stdout}{result.stderr}"
        return result.stdout

    def start(self) -> Stack:
        self.script("nats_start.sh")
        self.script("router_start.sh")
        return self

    def pid(self, which: str) -> int:
        return int((self.state / f"{which}.pid").read_text())

    def stop_all(self) -> None:
        for stack in [*self.extra, self]:
            for which, marker in (("router", "demo.router"), ("nats", "nats-server")):
                pid_file = stack.state / f"{which}.pid"
                if not pid_file.exists():
                    continue
                pid = int(pid_file.read_text() or 0)
                cmdline = Path(f"/proc/{pid}/cmdline")
                if pid and cmdline.exists() and marker in cmdline.read_bytes().decode(errors="replace"):
                    stop_pid(pid)

    @property
    def router_url(self) -> str:
        return f"http://{LOOPBACK}:{self.http_port}"

    @property
    def nats_url(self) -> str:
        return f"nats://{LOOPBACK}:{self.nats_port}"

    @property
    def monitor_url(self) -> str:
        return f"http://{LOOPBACK}:{self.nats_monitor_port}"

    @property
    def instance(self) -> str:
        return f"{LOOPBACK}:{self.http_port}"

    def params(self, *names: str, **extra: Any) -> dict[str, Any]:
        """Playbook params pointing at this stack (only the ones the playbook declares are kept)."""
        everything: dict[str, Any] = {
            "scripts_dir": str(SCRIPTS),
            "state_dir": str(self.state),
            "python": sys.executable,
            "nats_host": LOOPBACK,
            "nats_port": str(self.nats_port),
            "nats_monitor_port": str(self.nats_monitor_port),
            "router_host": LOOPBACK,
            "router_tcp_port": str(self.tcp_port),
            "router_http_port": str(self.http_port),
        }
        declared = set(PLAYBOOKS[names[0]].playbook.params)
        return {k: v for k, v in everything.items() if k in declared} | extra

    # the router's admin API (the Erlang console stand-in) and its public endpoints
    async def admin(self, method: str, path: str, body: Any = None) -> Any:
        token = (self.state / "router-admin.token").read_text().strip()
        async with (
            aiohttp.ClientSession() as session,
            session.request(
                method,
                f"{self.router_url}{path}",
                json=body,
                headers={"Authorization": f"Bearer {token}"},
                timeout=aiohttp.ClientTimeout(total=5),
            ) as resp,
        ):
            assert resp.status == 200, f"{method} {path}: {resp.status} {await resp.text()}"
            return await resp.json()

    async def get_json(self, url: str) -> Any:
        async with (
            aiohttp.ClientSession() as session,
            session.get(url, timeout=aiohttp.ClientTimeout(total=5)) as resp,
        ):
            return await resp.json(content_type=None)

    async def metrics(self) -> str:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{self.router_url}/metrics", timeout=aiohttp.ClientTimeout(total=5)) as resp,
        ):
            return await resp.text()

    async def stream_messages(self, stream: str = "DECIDE") -> int:
        nc = await nats.connect(self.nats_url, connect_timeout=2, allow_reconnect=False, max_reconnect_attempts=1)
        try:
            info = await nc.jetstream().stream_info(stream)
            return int(info.state.messages)
        finally:
            await nc.close()

    async def consumer_pending(self) -> int:
        nc = await nats.connect(self.nats_url, connect_timeout=2, allow_reconnect=False, max_reconnect_attempts=1)
        try:
            info = await nc.jetstream().consumer_info("DECIDE", "router_decide_consumer")
            return int(info.num_pending)
        finally:
            await nc.close()


async def poll(check: Callable[[], Awaitable[Any]], timeout: float = 20.0, what: str = "condition") -> Any:
    """Servers coming up or going away answer with errors meanwhile: those count as not yet."""
    return await poll_until_true(
        check, timeout, what, retry_on=(OSError, aiohttp.ClientError, AssertionError, nats.errors.Error)
    )


def metric_value(text: str, name: str, **labels: str) -> float:
    """The value of one series in Prometheus text format (0 when absent)."""
    want = {f'{k}="{v}"' for k, v in labels.items()}
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            head, _, value = line.rpartition(" ")
            inside = head[len(name) :].strip("{}")
            if want <= set(inside.split(",")) if inside else not want:
                return float(value)
    return 0.0


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    require_binary("nats-server")
    s = Stack(tmp_path / "state")
    try:
        yield s
    finally:
        s.stop_all()


class _UnexplainedMetrics(BaseHTTPRequestHandler):
    """/metrics of a router answering 503 to a third of its requests with every breaker closed and
    never opened (the simulated router's 503s all come from its breakers)."""

    started = time.monotonic()

    def do_GET(self) -> None:
        seconds = time.monotonic() - self.started
        body = (
            f'router_requests_total{{code="200"}} {int(20 * seconds)}\n'
            f'router_requests_total{{code="503"}} {int(10 * seconds)}\n'
            'router_circuit_breaker_state{tenant="tenant_a",provider="openai"} 0\n'
            'router_circuit_breaker_transitions_total{tenant="tenant_a",provider="openai",to="open"} 0\n'
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # one scrape a second: no access log
        pass


@pytest.fixture(scope="module")
def unexplained_503s() -> Iterator[int]:
    """The HTTP port of a router whose 503s no circuit breaker explains (scraped by the shared Prometheus)."""
    server = ThreadingHTTPServer((LOOPBACK, 0), _UnexplainedMetrics)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture(scope="module")
def shared(
    module_processes: RealProcesses, tmp_path_factory: pytest.TempPathFactory, unexplained_503s: int
) -> Iterator[tuple[Stack, str]]:
    """One running stack and one Prometheus scraping its router, for the non-restarting playbooks."""
    require_binary("nats-server")
    s = Stack(tmp_path_factory.mktemp("shared") / "state")
    try:
        s.start()
        routers = [s.instance, f"{LOOPBACK}:{unexplained_503s}"]
        prometheus = module_processes.prometheus(targets={"beamline-router": routers})
        prometheus.wait_for_samples(f'router_nats_connection_status{{instance="{s.instance}"}} == 1', timeout=30)
        yield s, prometheus.url
    finally:
        s.stop_all()


@pytest.fixture
async def clean(shared: tuple[Stack, str]) -> AsyncIterator[tuple[Stack, str]]:
    """The shared stack with every fault cleared before and after the test."""
    s, _ = shared
    await s.admin("POST", "/admin/faults/reset")
    yield shared
    await s.admin("POST", "/admin/faults/reset")


# --- running a playbook through the real Executor ---------------------------------------------


class TimelineEscalation(RecordingEscalation):
    """Escalations are collected by execution and put on the execution's timeline, as the service's
    escalator does (channels are not under test)."""

    def __init__(self, store: SQLiteStore, by_execution: dict[str, list[tuple[str, str]]]) -> None:
        super().__init__()
        self._store = store
        self._by_execution = by_execution

    async def escalate(self, execution_id: str, reason: str, severity: str) -> None:
        self._by_execution.setdefault(execution_id, []).append((reason, severity))
        await self._store.add_event(execution_id, SystemClock().now(), "escalation", reason, {"severity": severity})


class Harness:
    def __init__(self, store: SQLiteStore, prometheus_url: str) -> None:
        self.store = store
        self.escalations: dict[str, list[tuple[str, str]]] = {}

        self.executor = Executor(
            store=store,
            clock=SystemClock(),
            # the playbooks name NATS and the router through their params; a dead Prometheus port
            # when a test has none (its promql evidence then records the failure)
            endpoints=Endpoints(
                prometheus_url, "http://127.0.0.1:9", "nats://127.0.0.1:9", "http://127.0.0.1:9", 64 * 1024
            ),
            engine=TemplateEngine(),
            escalation=TimelineEscalation(store, self.escalations),
            max_concurrent=4,
        )

    async def start(
        self, playbook: str, params: dict[str, Any], labels: dict[str, str] | None = None
    ) -> tuple[str, asyncio.Task[None]]:
        loaded = PLAYBOOKS[playbook]
        validated = validate_params(loaded.playbook, params)
        execution_id = uuid.uuid4().hex
        now = SystemClock().now()
        await self.store.create_execution(
            NewExecution(
                id=execution_id,
                rule="test",
                rule_version="test",
                playbook=playbook,
                playbook_version=loaded.version,
                target="test",
                occurrence_id=None,
                fingerprint="0123456789abcdef",
                alertname="Test",
                mode="enforce",
                params=validated,
                state="admitted",
            ),
            now,
        )
        request = RunRequest(
            execution_id=execution_id,
            rule="test",
            playbook=loaded,
            params=validated,
            target="test",
            occurrence_id=0,
            fingerprint="0123456789abcdef",
            labels=labels or {"alertname": "Test"},
            annotations={},
            generator_url="",
            severity="critical",
        )
        return execution_id, self.executor.start(request)

    async def run(self, playbook: str, params: dict[str, Any], labels: dict[str, str] | None = None) -> Report:
        execution_id, task = await self.start(playbook, params, labels)
        await asyncio.wait_for(task, RUN_TIMEOUT_S)
        return await self.report(execution_id)

    async def report(self, execution_id: str) -> Report:
        record = await self.store.get_execution(execution_id)
        assert record is not None
        return Report(record, self.escalations.get(execution_id, []))

    async def awaiting_approval(self, execution_id: str) -> None:
        async def pending() -> bool:
            return self.executor.approvals.pending(execution_id)

        await poll(pending, 30, "an approval to be pending")

    async def approve(self, execution_id: str, approved: bool) -> None:
        await self.awaiting_approval(execution_id)
        assert self.executor.approvals.decide(execution_id, approved, "test-operator")


MakeHarness = Callable[..., "Harness"]


class Report:
    def __init__(self, record: ExecutionRecord, escalations: list[tuple[str, str]]) -> None:
        self.record = record
        self.escalations = escalations

    @property
    def state(self) -> str:
        return str(self.record.execution["state"])

    @property
    def reason(self) -> str:
        return str(self.record.execution["reason"])

    def step(self, name: str) -> dict[str, Any]:
        found = [s for s in self.record.steps if s["name"] == name]
        assert found, f"no step {name!r} in {[s['name'] for s in self.record.steps]}"
        step = dict(found[-1])
        step["data"] = json.loads(step["data"]) if isinstance(step["data"], str) else step["data"]
        return step

    def verified(self, phase: str = "verify") -> dict[str, dict[str, Any]]:
        """The checks of the last verification poll of ``phase``, by name."""
        polls = [e for e in self.record.events if e["kind"] == "verify"]
        datas = [json.loads(e["data"]) if isinstance(e["data"], str) else e["data"] for e in polls]
        datas = [d for d in datas if d.get("phase") == phase]
        assert datas, f"no verification poll of {phase!r}"
        return {c["check"]: c for c in datas[-1]["checks"]}

    def names(self) -> list[str]:
        return [s["name"] for s in self.record.steps]

    def phases(self) -> list[str]:
        return [s["phase"] for s in self.record.steps]

    @property
    def escalation_text(self) -> str:
        return "\n".join(reason for reason, _ in self.escalations)

    def assert_quiet(self, escalate_step: str) -> None:
        """The run succeeded without paging: its escalate step was skipped (on the timeline), nothing escalated."""
        assert self.state == "succeeded", self.explain()
        assert self.escalations == [], self.explain()
        assert escalate_step not in self.names(), self.explain()
        skips = [e["message"] for e in self.record.events if e["kind"] == "skip"]
        assert f"{escalate_step}: when is false" in skips, skips

    def explain(self) -> str:
        lines = [f"state={self.state} reason={self.reason}"]
        lines += [f"  {s['phase']}/{s['name']}: {s['status']} {s['summary']}" for s in self.record.steps]
        lines += [f"  escalation: {r}" for r, _ in self.escalations]
        return "\n".join(lines)


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[MakeHarness]:
    store = SQLiteStore(tmp_path / "remediator.db")
    await store.open()
    made: list[Harness] = []

    def make(prometheus_url: str = "http://127.0.0.1:9") -> Harness:
        made.append(Harness(store, prometheus_url))
        return made[-1]

    try:
        yield make
    finally:
        for h in made:
            await h.executor.shutdown()
        await store.close()


async def varz(s: Stack) -> dict[str, Any]:
    data: dict[str, Any] = await s.get_json(f"{s.monitor_url}/varz")
    return data


async def router_connected(s: Stack, port: int | None = None) -> bool:
    health = await s.get_json(f"http://{LOOPBACK}:{port or s.http_port}/healthz")
    return bool(health.get("nats_connected"))


# --- §1A NATS process down ------------------------------------------------------------------------


async def test_nats_process_down_restarts_nats_and_the_router_reconnects(stack: Stack, harness: MakeHarness) -> None:
    await asyncio.to_thread(stack.start)
    await poll(lambda: router_connected(stack), what="router connected")
    old_pid, old_start = stack.pid("nats"), (await varz(stack))["start"]

    report = await harness("http://127.0.0.1:9").run("nats-process-down", stack.params("nats-process-down"))

    assert report.state == "succeeded", report.explain()
    assert report.names()[:4] == ["status", "varz_before", "nats_stop", "nats_start"]
    assert report.step("status")["output"].startswith("Running")
    assert "Stopped nats-server" in report.step("nats_stop")["output"]
    # side effects: a new nats-server process (new PID, new start time), healthy, router reconnected
    assert stack.pid("nats") != old_pid and not pid_alive(old_pid)
    assert (await varz(stack))["start"] != old_start
    assert (await stack.get_json(f"{stack.monitor_url}/healthz"))["status"] == "ok"
    assert await router_connected(stack)
    verified = [e for e in report.record.events if e["kind"] == "verify"]
    assert verified and "all checks hold" in verified[-1]["message"]


async def test_nats_process_down_recovers_a_crashed_server(stack: Stack, harness: MakeHarness) -> None:
    await asyncio.to_thread(stack.start)
    crashed = stack.pid("nats")
    os.kill(crashed, signal.SIGKILL)  # the runbook's case: the NATS process itself died

    async def gone() -> bool:
        return not pid_alive(crashed)

    await poll(gone, what="nats-server gone")

    report = await harness("http://127.0.0.1:9").run("nats-process-down", stack.params("nats-process-down"))

    assert report.state == "succeeded", report.explain()
    assert report.step("status")["output"].startswith("Not Running")
    assert not report.step("varz_before")["ok"]
    assert pid_alive(stack.pid("nats")) and stack.pid("nats") != crashed
    assert await router_connected(stack)


async def test_nats_process_down_escalates_when_nats_cannot_start(stack: Stack, harness: MakeHarness) -> None:
    # Something else holds NATS's client port: nats-server cannot bind it and exits at once.
    with socket.socket() as squatter:
        squatter.bind((LOOPBACK, stack.nats_port))
        squatter.listen()
        report = await harness("http://127.0.0.1:9").run("nats-process-down", stack.params("nats-process-down"))

    assert report.state == "escalated", report.explain()
    assert 'step "nats_start" failed' in report.reason
    assert report.escalations[-1] == (report.reason, "critical")
    assert "verify" not in report.phases()


# --- §1B Router-NATS connection flapping ----------------------------------------------------------


def _expiring_cert(directory: Path) -> Path:
    cert, key = directory / "nats.crt", directory / "nats.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=nats.test",
         "-keyout", str(key), "-out", str(cert)],
        capture_output=True, check=True, timeout=30,
    )  # fmt: skip
    return cert


async def test_router_nats_flapping_diagnoses_then_restarts_router_nodes_one_at_a_time(
    stack: Stack, harness: MakeHarness, tmp_path: Path
) -> None:
    require_binary("openssl")
    await asyncio.to_thread(stack.start)
    # a second router node with its own state dir, as the playbook expects for non-primary nodes
    second = Stack(stack.state / f"router-{free_port()}-{free_port()}")
    tcp2, http2 = (int(p) for p in second.state.name.split("-")[1:])
    second.tcp_port, second.http_port = tcp2, http2
    second.nats_port, second.nats_monitor_port = stack.nats_port, stack.nats_monitor_port
    stack.extra.append(second)
    await asyncio.to_thread(
        second.script, "router_start.sh", BEAMLINE_ROUTER_ADMIN_TOKEN_FILE=str(stack.state / "router-admin.token")
    )
    await poll(lambda: router_connected(stack), what="router 1 connected")
    await poll(lambda: router_connected(second), what="router 2 connected")
    for _ in range(2):  # the fault the alert is about
        await stack.admin("POST", "/admin/faults/nats_link", {"state": "flap"})
    with (stack.state / "nats.log").open("a") as log:
        log.write("[1] 2024/01/01 00:00:00.000000 [INF] 127.0.0.1:5555 - cid:9 - Slow consumer detected\n")
    pids = (stack.pid("router"), second.pid("router"))
    nodes = f"{stack.tcp_port}:{stack.http_port},{tcp2}:{http2}"
    cert = _expiring_cert(tmp_path)

    report = await harness("http://127.0.0.1:9").run(
        "router-nats-flapping",
        stack.params("router-nats-flapping", nodes=nodes, tls="true", tls_cert_file=str(cert)),
    )

    assert report.state == "succeeded", report.explain()
    # diagnostics: network, TLS (enabled here: the certificate expires within 14 days), log scan
    assert report.step("nats_client_port")["ok"]
    assert report.step("nats_health")["ok"]
    assert "Certificate will expire" in report.step("tls_expiry")["output"]
    assert report.step("nats_log_scan")["exit_code"] == 0
    assert "Slow consumer" in report.escalation_text
    assert "Certificate will expire" in report.escalation_text
    assert report.escalations[0][1] == "warning"
    # one node at a time, each checked before the next
    node1, node2 = nodes.split(",")
    order = [p for p in report.phases() if "rolling_restart" in p]
    assert order.index(f"steps/rolling_restart[{node1}]") < order.index(f"steps/rolling_restart[{node2}]")
    assert max(i for i, p in enumerate(order) if node1 in p) < min(i for i, p in enumerate(order) if node2 in p)
    checks = [e for e in report.record.events if e["kind"] == "verify" and "rolling_restart" in e["message"]]
    assert any(node1 in e["message"] and "all checks hold" in e["message"] for e in checks)
    assert any(node2 in e["message"] and "all checks hold" in e["message"] for e in checks)
    # side effects: both routers are new processes, connected to NATS
    assert stack.pid("router") != pids[0] and second.pid("router") != pids[1]
    assert not pid_alive(pids[0]) and not pid_alive(pids[1])
    assert await router_connected(stack) and await router_connected(second)


async def test_router_nats_flapping_with_nothing_found_restarts_the_routers_without_paging(
    stack: Stack, harness: MakeHarness
) -> None:
    await asyncio.to_thread(stack.start)
    await poll(lambda: router_connected(stack), what="router connected")
    pid = stack.pid("router")
    report = await harness("http://127.0.0.1:9").run(
        "router-nats-flapping",
        stack.params("router-nats-flapping", nodes=f"{stack.tcp_port}:{stack.http_port}"),
    )
    # the diagnostics found nothing a person must act on: kept in the report, nobody paged
    report.assert_quiet("diagnostics")
    assert report.step("nats_client_port")["ok"] and report.step("nats_health")["ok"]
    assert "tls_expiry" not in report.names()
    assert any("tls_expiry: when is false" in e["message"] for e in report.record.events)
    assert report.step("nats_log_scan")["exit_code"] == 1
    # the restarts that follow are unchanged
    assert stack.pid("router") != pid and not pid_alive(pid)
    assert await router_connected(stack)


# --- §1C JetStream backlog, and the purge behind an approval -------------------------------------


async def _backlog(s: Stack, count: int) -> None:
    await s.admin("POST", "/admin/faults/consumer", {"mode": "stalled"})

    async def parked() -> bool:
        return bool((await s.admin("GET", "/admin/faults"))["consumer_parked"])

    await poll(parked, what="consumer parked")
    before = await s.consumer_pending()
    await s.admin("POST", "/admin/publish", {"count": count})

    async def grown() -> bool:
        return await s.consumer_pending() >= before + count

    await poll(grown, what=f"{count} more pending")


async def test_jetstream_backlog_gathers_evidence_advises_and_purges_nothing(
    clean: tuple[Stack, str], harness: MakeHarness
) -> None:
    s, prometheus = clean
    await _backlog(s, 300)
    pending, messages = await s.consumer_pending(), await s.stream_messages()
    # under the alert's threshold (1000), but still rising: that pages
    rising = (
        f'deriv(router_jetstream_consumer_pending{{instance="{s.instance}",consumer="router_decide_consumer"}}[1m]) > 0'
    )
    await poll(lambda: _prom(prometheus, rising), timeout=30, what="the backlog rising in Prometheus")

    report = await harness(prometheus).run("jetstream-backlog", s.params("jetstream-backlog"))

    assert report.state == "succeeded", report.explain()
    assert report.step("jsz")["ok"]
    jsz = report.step("jsz")["data"]["streams"]["DECIDE"]
    assert jsz["consumers"]["router_decide_consumer"]["num_pending"] == pending
    assert report.step("consumer_info")["data"]["num_pending"] == pending
    assert report.step("pending_trend")["ok"] and report.step("pending_trend")["data"]["samples"]
    assert report.step("processing_rate")["ok"] and report.step("publish_rate")["ok"]
    assert f"{pending} pending" in report.escalation_text
    assert "scale up" in report.escalation_text and "Backpressure Protocol" in report.escalation_text
    # nothing purged, nothing asked
    assert await s.stream_messages() == messages and await s.consumer_pending() == pending
    assert not any(e["kind"] == "approval" for e in report.record.events)


async def test_jetstream_backlog_that_has_drained_pages_nobody(clean: tuple[Stack, str], harness: MakeHarness) -> None:
    s, prometheus = clean
    await _backlog(s, 300)
    await s.admin("POST", "/admin/faults/reset")  # the consumer runs again and drains the backlog

    async def drained() -> bool:
        return await s.consumer_pending() == 0

    await poll(drained, timeout=30, what="the backlog drained")

    report = await harness(prometheus).run("jetstream-backlog", s.params("jetstream-backlog"))

    report.assert_quiet("advice")
    assert report.step("consumer_info")["data"]["num_pending"] == 0
    assert report.step("pending_trend")["ok"] and report.step("pending_rising")["ok"]


async def test_jetstream_purge_waits_for_approval_denied_keeps_everything_approved_purges(
    clean: tuple[Stack, str], harness: MakeHarness
) -> None:
    s, prometheus = clean
    await _backlog(s, 200)
    messages = await s.stream_messages()
    assert messages >= 200
    h = harness(prometheus)

    execution_id, task = await h.start("jetstream-purge", s.params("jetstream-purge"))
    await h.approve(execution_id, approved=False)
    await asyncio.wait_for(task, RUN_TIMEOUT_S)
    denied = await h.report(execution_id)
    assert denied.state == "escalated", denied.explain()
    assert "purge" not in denied.names()
    assert "approval needed" in denied.escalation_text and "DATA LOSS" in denied.escalation_text
    assert await s.stream_messages() == messages

    execution_id, task = await h.start("jetstream-purge", s.params("jetstream-purge"))
    await h.awaiting_approval(execution_id)
    assert await s.stream_messages() == messages  # waiting for a human: nothing purged yet
    await h.approve(execution_id, approved=True)
    await asyncio.wait_for(task, RUN_TIMEOUT_S)
    approved = await h.report(execution_id)
    assert approved.state == "succeeded", approved.explain()
    assert approved.step("purge")["ok"]
    assert await s.stream_messages() == 0 and await s.consumer_pending() == 0


def test_stream_names_outside_the_allowlist_are_refused() -> None:
    with pytest.raises(ValueError, match="not one of the allowed values"):
        validate_params(PLAYBOOKS["jetstream-purge"].playbook, {"stream": "ROUTER_EVENTS"})


# --- §2 circuit breaker -----------------------------------------------------------------------


async def _prom(prometheus: str, query: str) -> list[dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{prometheus}/api/v1/query", params={"query": query}) as resp,
    ):
        payload = await resp.json()
        result: list[dict[str, Any]] = payload["data"]["result"]
        return result


async def _open_breaker(s: Stack, prometheus: str, tenant: str, provider: str) -> None:
    await s.admin("POST", f"/admin/faults/circuit_breaker/{tenant}/{provider}/open")
    query = f'router_circuit_breaker_state{{instance="{s.instance}",tenant="{tenant}",provider="{provider}"}} == 1'
    await poll(lambda: _prom(prometheus, query), what=f"Prometheus sees {tenant}/{provider} open")


def _transitions(text: str, tenant: str, provider: str, to: str) -> float:
    return metric_value(text, "router_circuit_breaker_transitions_total", tenant=tenant, provider=provider, to=to)


async def test_circuit_breaker_with_a_healthy_provider_goes_half_open_then_closes(
    clean: tuple[Stack, str], harness: MakeHarness
) -> None:
    s, prometheus = clean
    tenant, provider = "tenant_a", "openai"
    await _open_breaker(s, prometheus, tenant, provider)
    healthy = f'sum(rate(router_provider_requests_total{{instance="{s.instance}",provider="{provider}"}}[1m])) > 0'
    await poll(lambda: _prom(prometheus, healthy), what="provider traffic in Prometheus")
    half_open_before = _transitions(await s.metrics(), tenant, provider, "half_open")
    status = await s.admin("GET", f"/admin/circuit_breaker/{tenant}/{provider}/status")
    assert status["state"] == "open"

    report = await harness(prometheus).run(
        "circuit-breaker-open", s.params("circuit-breaker-open", tenant=tenant, provider=provider)
    )

    assert report.state == "succeeded", report.explain()
    assert json.loads(report.step("breaker_status")["output"].strip())["state"] == "open"
    assert report.step("provider_p95")["data"]["samples"] and report.step("provider_errors")["ok"]
    assert report.step("diagnosis")["ok"] and report.step("provider_healthy")["ok"]
    assert "provider_unhealthy" not in report.names()
    assert "half_open" in report.step("force_half_open")["output"]
    # side effects: forced to half-open exactly once, then the probes closed it
    text = await s.metrics()
    assert _transitions(text, tenant, provider, "half_open") == half_open_before + 1
    status = await s.admin("GET", f"/admin/circuit_breaker/{tenant}/{provider}/status")
    assert status["state"] == "closed"
    assert report.escalations == []


async def test_circuit_breaker_with_a_failing_provider_stays_open_and_escalates(
    clean: tuple[Stack, str], harness: MakeHarness
) -> None:
    s, prometheus = clean
    tenant, provider = "tenant_a", "anthropic"
    await s.admin("POST", f"/admin/faults/provider/{provider}", {"health": "failing"})
    for _ in range(3):  # the breakers flap on the failing provider: more failed requests
        await s.admin("POST", f"/admin/circuit_breaker/tenant_b/{provider}/force_recovery")

        async def reopened() -> bool:
            status = await s.admin("GET", f"/admin/circuit_breaker/tenant_b/{provider}/status")
            return bool(status["state"] == "open")

        await poll(reopened, what="the breaker re-opened on the failing provider")
    slow = f'router_provider_latency_p95_ms{{instance="{s.instance}",provider="{provider}"}} >= 1000'
    await poll(lambda: _prom(prometheus, slow), timeout=30, what="the failing provider's p95 in Prometheus")
    await _open_breaker(s, prometheus, tenant, provider)
    half_open_before = _transitions(await s.metrics(), tenant, provider, "half_open")

    report = await harness(prometheus).run(
        "circuit-breaker-open", s.params("circuit-breaker-open", tenant=tenant, provider=provider)
    )

    assert report.state == "escalated", report.explain()
    assert 'step "provider_healthy" failed' in report.reason
    assert "force_half_open" not in report.names()
    assert "left open" in report.escalation_text and "p95" in report.escalation_text
    status = await s.admin("GET", f"/admin/circuit_breaker/{tenant}/{provider}/status")
    assert status["state"] == "open"
    assert _transitions(await s.metrics(), tenant, provider, "half_open") == half_open_before


async def test_full_force_recovery_only_after_approval(clean: tuple[Stack, str], harness: MakeHarness) -> None:
    s, prometheus = clean
    tenant, provider = "tenant_b", "openai"
    await _open_breaker(s, prometheus, tenant, provider)
    h = harness(prometheus)
    params = s.params("circuit-breaker-force-recovery", tenant=tenant, provider=provider)

    execution_id, task = await h.start("circuit-breaker-force-recovery", params)
    await h.approve(execution_id, approved=False)
    await asyncio.wait_for(task, RUN_TIMEOUT_S)
    assert (await h.report(execution_id)).state == "escalated"
    assert (await s.admin("GET", f"/admin/circuit_breaker/{tenant}/{provider}/status"))["state"] == "open"

    execution_id, task = await h.start("circuit-breaker-force-recovery", params)
    await h.approve(execution_id, approved=True)
    await asyncio.wait_for(task, RUN_TIMEOUT_S)
    report = await h.report(execution_id)
    assert report.state == "succeeded", report.explain()
    assert (await s.admin("GET", f"/admin/circuit_breaker/{tenant}/{provider}/status"))["state"] == "closed"
    assert _transitions(await s.metrics(), tenant, provider, "closed") >= 1


# --- §3 clean state restart -------------------------------------------------------------------


async def _tcp_open(port: int) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(LOOPBACK, port), 2)
    except (OSError, TimeoutError):
        return False
    writer.close()
    return True


async def _started_with_messages(s: Stack, count: int) -> int:
    await asyncio.to_thread(s.start)
    await poll(lambda: router_connected(s), what="router connected")
    await s.admin("POST", "/admin/publish", {"count": count})

    async def stored() -> bool:
        return await s.stream_messages() >= count

    await poll(stored, what="messages stored")
    return await s.stream_messages()


async def test_clean_state_restart_keeps_data_and_brings_ports_9000_9001_back(
    stack: Stack, harness: MakeHarness
) -> None:
    messages = await _started_with_messages(stack, 20)
    pids = (stack.pid("nats"), stack.pid("router"))

    report = await harness("http://127.0.0.1:9").run("clean-state-restart", stack.params("clean-state-restart"))

    assert report.state == "succeeded", report.explain()
    # the runbook's order, with step 6 starting the router (not NATS again), no wipe without the param
    assert report.names()[:5] == ["router_stop", "nats_stop", "nats_start", "setup_nats_streams", "router_start"]
    assert "Started router" in report.step("router_start")["output"]
    assert not any(e["kind"] == "approval" for e in report.record.events)
    checks = report.verified()
    assert checks["router_tcp_port"]["ok"] and checks["router_http_port"]["ok"], checks
    assert stack.pid("nats") != pids[0] and stack.pid("router") != pids[1]
    assert await _tcp_open(stack.tcp_port) and await _tcp_open(stack.http_port)
    assert await router_connected(stack)
    assert await stack.stream_messages() == messages  # the data survived


async def test_clean_state_restart_wipes_data_only_after_approval(stack: Stack, harness: MakeHarness) -> None:
    messages = await _started_with_messages(stack, 20)
    pids = (stack.pid("nats"), stack.pid("router"))
    h = harness("http://127.0.0.1:9")
    params = stack.params("clean-state-restart", wipe_data="true")

    # denied: nothing was stopped, nothing wiped
    execution_id, task = await h.start("clean-state-restart", params)
    await h.approve(execution_id, approved=False)
    await asyncio.wait_for(task, RUN_TIMEOUT_S)
    denied = await h.report(execution_id)
    assert denied.state == "escalated", denied.explain()
    assert denied.names() == ["approve_wipe"]
    assert (stack.pid("nats"), stack.pid("router")) == pids and pid_alive(pids[0]) and pid_alive(pids[1])
    assert await stack.stream_messages() == messages

    # approved: wiped, streams re-created empty, everything back
    execution_id, task = await h.start("clean-state-restart", params)
    await h.approve(execution_id, approved=True)
    await asyncio.wait_for(task, RUN_TIMEOUT_S)
    report = await h.report(execution_id)
    assert report.state == "succeeded", report.explain()
    assert report.names()[:7] == [
        "approve_wipe", "router_stop", "nats_stop", "wipe_data", "nats_start", "setup_nats_streams", "router_start",
    ]  # fmt: skip
    assert await stack.stream_messages() == 0
    assert await _tcp_open(stack.tcp_port) and await _tcp_open(stack.http_port)
    assert await router_connected(stack)


# --- §4 troubleshooting diagnostics -------------------------------------------------------------


async def test_high_latency_back_to_normal_pages_nobody(clean: tuple[Stack, str], harness: MakeHarness) -> None:
    s, prometheus = clean
    await s.admin("POST", "/admin/faults/provider/openai", {"extra_latency_ms": 1500})
    slow = f'router_provider_latency_p95_ms{{instance="{s.instance}",provider="openai"}} >= 1000'
    await poll(lambda: _prom(prometheus, slow), timeout=30, what="openai's p95 over 1s in Prometheus")
    await s.admin("POST", "/admin/faults/reset")
    sel = f'instance="{s.instance}"'
    normal = (
        f"max(router_provider_latency_p95_ms{{{sel}}}) < 1000 and on () "
        f"histogram_quantile(0.95, sum by (le) (rate(router_request_duration_seconds_bucket{{{sel}}}[1m]))) <= 1"
    )  # a slow provider from an earlier test can hold the 1m p95 up for up to a minute
    await poll(lambda: _prom(prometheus, normal), timeout=90, what="latency back to normal in Prometheus")

    report = await harness(prometheus).run("diagnose-high-latency", s.params("diagnose-high-latency"))

    report.assert_quiet("diagnosis")
    assert float(report.step("request_p95")["data"]["samples"][0]["value"]) <= 1
    assert {x["labels"]["provider"] for x in report.step("provider_p95")["data"]["samples"]} >= {"openai"}


async def test_high_latency_diagnosis_names_the_slow_provider(clean: tuple[Stack, str], harness: MakeHarness) -> None:
    s, prometheus = clean
    await s.admin("POST", "/admin/faults/provider/openai", {"extra_latency_ms": 1500})
    slow = f'router_provider_latency_p95_ms{{instance="{s.instance}",provider="openai"}} >= 1000'
    await poll(lambda: _prom(prometheus, slow), timeout=30, what="openai's p95 over 1s in Prometheus")

    report = await harness(prometheus).run("diagnose-high-latency", s.params("diagnose-high-latency"))

    assert report.state == "succeeded", report.explain()
    assert "router_request_duration_seconds" in report.step("latency_metrics")["output"]
    assert report.step("request_p95")["data"]["samples"]
    assert {x["labels"]["provider"] for x in report.step("provider_p95")["data"]["samples"]} >= {"openai"}
    assert report.step("consumer_info")["ok"]
    text = report.escalation_text
    assert "p95 request latency" in text and "slow provider(s): openai" in text, text


def _share_429(s: Stack) -> str:
    sel = f'instance="{s.instance}"'
    return f'sum(rate(router_requests_total{{{sel},code="429"}}[1m])) / sum(rate(router_requests_total{{{sel}}}[1m]))'


async def test_429_burst_that_has_passed_pages_nobody(clean: tuple[Stack, str], harness: MakeHarness) -> None:
    s, prometheus = clean
    await s.admin("POST", "/admin/faults/rate_limit", {"fraction": 0.5})
    seen = f'increase(router_requests_total{{instance="{s.instance}",code="429"}}[1m]) > 0'
    await poll(lambda: _prom(prometheus, seen), timeout=30, what="429s in Prometheus")
    await s.admin("POST", "/admin/faults/reset")
    await poll(lambda: _prom(prometheus, f"{_share_429(s)} <= 0.05"), timeout=90, what="429s under 5%")

    report = await harness(prometheus).run("diagnose-rate-limiting", s.params("diagnose-rate-limiting"))

    report.assert_quiet("diagnosis")
    assert 0 < float(report.step("share_429")["data"]["samples"][0]["value"]) <= 0.05
    assert report.step("rate_limiter_log")["exit_code"] in (0, 1)


async def test_429_diagnosis_reports_the_rate_limited_share(clean: tuple[Stack, str], harness: MakeHarness) -> None:
    s, prometheus = clean
    await s.admin("POST", "/admin/faults/rate_limit", {"fraction": 0.5})
    await poll(lambda: _prom(prometheus, f"{_share_429(s)} > 0.1"), timeout=40, what="over 10% 429s in Prometheus")

    report = await harness(prometheus).run("diagnose-rate-limiting", s.params("diagnose-rate-limiting"))

    assert report.state == "succeeded", report.explain()
    assert report.step("share_429")["data"]["samples"]
    assert report.step("rate_limiter_log")["exit_code"] in (0, 1)
    text = report.escalation_text
    assert "% of requests rate limited" in text and "429=" in text, text
    assert "over 5%" in text, text


def _share_503(instance: str) -> str:
    sel = f'instance="{instance}"'
    return f'sum(rate(router_requests_total{{{sel},code="503"}}[1m])) / sum(rate(router_requests_total{{{sel}}}[1m]))'


async def test_503s_from_an_open_breaker_are_left_to_the_breaker_procedure(
    clean: tuple[Stack, str], harness: MakeHarness
) -> None:
    s, prometheus = clean
    await _open_breaker(s, prometheus, "tenant_b", "anthropic")

    report = await harness(prometheus).run("diagnose-503-errors", s.params("diagnose-503-errors"))

    # circuit-breaker-open owns an open breaker (its own alert), and pages itself if it cannot close it
    report.assert_quiet("diagnosis")
    states = report.step("breaker_states")["data"]["samples"]
    assert {(x["labels"]["tenant"], x["labels"]["provider"], x["value"]) for x in states} >= {
        ("tenant_b", "anthropic", "1")
    }
    assert report.step("breakers_recent")["data"]["samples"]


async def test_503s_after_the_breakers_were_closed_page_nobody(clean: tuple[Stack, str], harness: MakeHarness) -> None:
    """Acceptance 3 of issue 18: CircuitBreaker503, held back while CircuitBreakerOpen fired and lagging
    by its 1m rate window, arrives after the breaker was fixed: its diagnosis pages nobody."""
    s, prometheus = clean
    breakers = [("tenant_a", "openai"), ("tenant_b", "openai")]
    for tenant, provider in breakers:
        await _open_breaker(s, prometheus, tenant, provider)
    over = f"{_share_503(s.instance)} > 0.1"
    await poll(lambda: _prom(prometheus, over), timeout=40, what="over 10% 503s in Prometheus")
    for tenant, provider in breakers:
        await s.admin("POST", f"/admin/circuit_breaker/{tenant}/{provider}/force_recovery")
    closed = f'max(router_circuit_breaker_state{{instance="{s.instance}"}}) == 0'
    await poll(lambda: _prom(prometheus, closed), what="every breaker closed in Prometheus")

    report = await harness(prometheus).run("diagnose-503-errors", s.params("diagnose-503-errors"))

    report.assert_quiet("diagnosis")
    # what CircuitBreaker503 fired on still holds: over 5% 503s in the last minute
    assert float(report.step("share_503")["data"]["samples"][0]["value"]) > 0.05
    assert {x["value"] for x in report.step("breaker_states")["data"]["samples"]} == {"0"}
    recent = {
        (x["labels"]["tenant"], x["labels"]["provider"]) for x in report.step("breakers_recent")["data"]["samples"]
    }
    assert recent >= set(breakers)


async def test_503s_no_breaker_explains_page_with_the_diagnosis(
    clean: tuple[Stack, str], harness: MakeHarness, unexplained_503s: int
) -> None:
    _, prometheus = clean
    instance = f"{LOOPBACK}:{unexplained_503s}"
    await poll(lambda: _prom(prometheus, f"{_share_503(instance)} > 0.05"), timeout=30, what="the 503s in Prometheus")

    report = await harness(prometheus).run(
        "diagnose-503-errors", {"router_host": LOOPBACK, "router_http_port": str(unexplained_503s)}
    )

    assert report.state == "succeeded", report.explain()
    assert report.step("breakers_recent")["ok"] and not report.step("breakers_recent")["data"]["samples"]
    [(text, severity)] = report.escalations
    assert severity == "warning"
    assert "Open circuit breakers: none; half-open: none" in text, text
    assert "the 503s are not from circuit breakers" in text, text


async def test_503s_with_the_breakers_unknown_page(clean: tuple[Stack, str], harness: MakeHarness) -> None:
    s, _ = clean
    report = await harness("http://127.0.0.1:9").run("diagnose-503-errors", s.params("diagnose-503-errors"))

    assert report.state == "succeeded", report.explain()
    assert not report.step("breakers_recent")["ok"]
    assert "breaker states unknown" in report.escalation_text and "share unknown" in report.escalation_text


async def test_stuck_queue_diagnosis_finds_the_crashed_consumer(clean: tuple[Stack, str], harness: MakeHarness) -> None:
    s, prometheus = clean
    await s.admin("POST", "/admin/faults/consumer", {"mode": "crashed"})
    down = f'router_nats_subscriber_up{{instance="{s.instance}"}} == 0'
    await poll(lambda: _prom(prometheus, down), timeout=30, what="subscriber down in Prometheus")
    await s.admin("POST", "/admin/publish", {"count": 5})

    report = await harness(prometheus).run("diagnose-stuck-queue", s.params("diagnose-stuck-queue"))

    assert report.state == "succeeded", report.explain()
    assert report.step("router_health")["data"]["json"]["consumer"] == "crashed"
    assert report.step("consumer_info")["data"]["num_pending"] >= 5
    assert report.escalations[0][1] == "critical"
    assert "consumer crash" in report.escalation_text and "subscriber_up=0" in report.escalation_text


async def test_stuck_queue_progressing_again_pages_nobody(clean: tuple[Stack, str], harness: MakeHarness) -> None:
    s, prometheus = clean
    await s.admin("POST", "/admin/faults/consumer", {"mode": "crashed"})
    down = f'router_nats_subscriber_up{{instance="{s.instance}"}} == 0'
    await poll(lambda: _prom(prometheus, down), timeout=30, what="subscriber down in Prometheus")
    await s.admin("POST", "/admin/publish", {"count": 5})
    await s.admin("POST", "/admin/faults/reset")  # the consumer is back (a restart, in real life)

    async def drained() -> bool:
        return await s.consumer_pending() == 0

    await poll(drained, timeout=30, what="the queue drained")
    sel = f'instance="{s.instance}"'
    progressing = f"router_nats_subscriber_up{{{sel}}} == 1 and on () increase(router_jetstream_messages_processed_total{{{sel}}}[2m]) > 0"
    await poll(lambda: _prom(prometheus, progressing), timeout=30, what="the consumer up and processing in Prometheus")

    report = await harness(prometheus).run("diagnose-stuck-queue", s.params("diagnose-stuck-queue"))

    report.assert_quiet("diagnosis")
    assert report.step("router_health")["data"]["json"]["consumer"] == "running"
    assert report.step("consumer_info")["data"]["num_pending"] == 0


async def test_notify_only_escalates_with_the_alert_summary(harness: MakeHarness) -> None:
    report = await harness().run("notify-only", {}, labels={"alertname": "RouterDown", "instance": "127.0.0.1:9001"})
    assert report.state == "succeeded", report.explain()
    assert report.escalations[0][0].startswith("RouterDown on 127.0.0.1:9001")
