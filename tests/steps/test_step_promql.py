"""``promql`` step and the ``alert_expr`` helper against a real Prometheus (and Alertmanager)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from support.realprocs import AlertmanagerServer, PrometheusServer, RealProcesses, free_port, http_get

from demo.processes import poll
from service.steps import StepContext, StepOutcome
from service.steps.promql import Spec, alert_expr_spec, expr_from_generator_url, run

FIXTURES = Path(__file__).parent.parent / "fixtures" / "alertmanager"


class Exporter:
    """A tiny /metrics endpoint on its own thread (so blocking polls do not stop it); ``values`` can
    change between scrapes."""

    def __init__(self) -> None:
        self.values = {"a": 1.0, "b": 5.0}
        exporter = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                lines = ["# TYPE remediator_test_gauge gauge"]
                lines += [f'remediator_test_gauge{{name="{k}"}} {v}' for k, v in exporter.values.items()]
                body = ("\n".join(lines) + "\n").encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # one line per scrape would drown the test output

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


@pytest.fixture(scope="module")
def exporter() -> Iterator[Exporter]:
    exp = Exporter()
    try:
        yield exp
    finally:
        exp.close()


@pytest.fixture(scope="module")
def prom(exporter: Exporter, module_processes: RealProcesses) -> PrometheusServer:
    """One Prometheus for the read-only tests of this module: each start costs ~5 s before a scrape."""
    server = module_processes.prometheus(targets={"exporter": [f"127.0.0.1:{exporter.port}"]})
    server.wait_for_samples("count(remediator_test_gauge) == 2")
    return server


def ctx(prom: PrometheusServer) -> StepContext:
    return StepContext(execution_id="ex-promql", prometheus_url=prom.url)


async def poll_step(step: Callable[[], Awaitable[StepOutcome]], timeout: float) -> list[StepOutcome]:
    """Run ``step`` until it is ok or ``timeout`` passes; every outcome, last one last."""
    outcomes: list[StepOutcome] = []
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / 0.2) + 1):
        outcomes.append(await step())
        if outcomes[-1].ok or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)  # poll interval, bounded by the deadline
    return outcomes


async def test_expectation_holds_for_every_sample(prom: PrometheusServer) -> None:
    spec = Spec(type="promql", query="remediator_test_gauge", expect={"op": ">=", "value": 1})
    out = await run(spec, ctx(prom))
    assert (out.ok, out.status) == (True, "ok"), out.summary
    by_name = {s["labels"]["name"]: s["value"] for s in out.data["samples"]}
    assert by_name == {"a": "1", "b": "5"}
    assert 'name="a"' in out.output and "=> 5" in out.output
    assert "2 samples, every value >= 1" in out.summary


async def test_expectation_failing_names_the_sample(prom: PrometheusServer) -> None:
    spec = Spec(type="promql", query="remediator_test_gauge", expect={"op": "<", "value": 3})
    out = await run(spec, ctx(prom))
    assert (out.ok, out.status) == (False, "failed")
    assert "1 of 2 samples fail < 3" in out.summary and 'name="b"' in out.summary


async def test_expectation_on_no_samples_fails(prom: PrometheusServer) -> None:
    spec = Spec(type="promql", query="remediator_test_gauge > 100", expect={"op": ">", "value": 0})
    out = await run(spec, ctx(prom))
    assert (out.ok, out.status) == (False, "failed")
    assert out.summary.startswith("no samples")


@pytest.mark.parametrize(
    ("query", "ok", "count"), [("remediator_test_gauge > 100", True, 0), ("remediator_test_gauge > 3", False, 1)]
)
async def test_expect_empty(prom: PrometheusServer, query: str, ok: bool, count: int) -> None:
    out = await run(Spec(type="promql", query=query, expect_empty=True), ctx(prom))
    assert out.ok is ok
    assert len(out.data["samples"]) == count


async def test_scalar_result(prom: PrometheusServer) -> None:
    out = await run(
        Spec(type="promql", query="scalar(sum(remediator_test_gauge))", expect={"op": "==", "value": 6}), ctx(prom)
    )
    assert out.ok, out.summary
    assert out.data["samples"][0]["labels"] == {}


@pytest.mark.parametrize(
    ("query", "message"), [("remediator_test_gauge{", "bad_data"), ("remediator_test_gauge[5s]", "matrix")]
)
async def test_bad_query_is_an_error(prom: PrometheusServer, query: str, message: str) -> None:
    out = await run(Spec(type="promql", query=query), ctx(prom))
    assert (out.ok, out.status) == (False, "error")
    assert message in out.summary


async def test_range_evidence(prom: PrometheusServer) -> None:
    spec = Spec(type="promql", query='remediator_test_gauge{name="b"}', range={"duration": 60, "step": 1})
    out = await run(spec, ctx(prom))
    assert out.ok, out.summary
    (series,) = out.data["range"]
    assert series["labels"]["name"] == "b"
    assert series["values"] and all(v == "5" for _, v in series["values"])


async def test_prometheus_down() -> None:
    context = StepContext(execution_id="x", prometheus_url=f"http://127.0.0.1:{free_port()}")
    out = await run(Spec(type="promql", query="up"), context)
    assert (out.ok, out.status) == (False, "failed")
    assert "Connection refused" in out.summary


def test_expr_from_generator_url() -> None:
    body = json.loads((FIXTURES / "firing-nats-jetstream-unhealthy.json").read_text())
    url = body["alerts"][0]["generatorURL"]
    assert expr_from_generator_url(url) == "nats_lab_jetstream_healthy == 0"
    spec = alert_expr_spec(url, timeout=3)
    assert (spec.query, spec.expect_empty, spec.prometheus_url) == ("nats_lab_jetstream_healthy == 0", True, None)
    with pytest.raises(ValueError):
        expr_from_generator_url("http://127.0.0.1:9090/graph?g0.tab=1")


@pytest.fixture
def own_exporter() -> Iterator[Exporter]:
    exp = Exporter()
    try:
        yield exp
    finally:
        exp.close()


async def test_alert_expr_until_the_alert_stops(
    tmp_path: Path,
    own_exporter: Exporter,
    prometheus_server: Callable[..., PrometheusServer],
    alertmanager_server: Callable[[str], AlertmanagerServer],
) -> None:
    """Fire a real alert, take its generatorURL from Alertmanager, and poll it until the fix holds."""
    rules = tmp_path / "rules.yml"
    rules.write_text(
        "groups:\n- name: test\n  rules:\n  - alert: GaugeHigh\n    expr: remediator_test_gauge > 3\n    for: 0s\n"
    )
    am = alertmanager_server("route: {receiver: none, group_wait: 1s}\nreceivers: [{name: none}]\n")
    prom = prometheus_server(
        targets={"exporter": [f"127.0.0.1:{own_exporter.port}"]},
        rule_files=[rules],
        alertmanagers=[f"127.0.0.1:{am.port}"],
    )

    def firing_alerts() -> list[dict[str, Any]]:
        status, body = http_get(am.url + "/api/v2/alerts")
        assert status == 200
        return [a for a in json.loads(body) if a["labels"]["alertname"] == "GaugeHigh"]

    found: list[dict[str, Any]] = []

    def alert_arrived() -> bool:
        found[:] = firing_alerts()
        return bool(found)

    await asyncio.to_thread(poll, alert_arrived, 20, "GaugeHigh in Alertmanager")
    spec = alert_expr_spec(found[0]["generatorURL"], timeout=3)
    assert spec.query == "remediator_test_gauge > 3"

    still = await run(spec, ctx(prom))
    assert (still.ok, still.status) == (False, "failed")
    assert still.data["samples"][0]["labels"]["name"] == "b"

    own_exporter.values["b"] = 0.0  # the "fix"
    outcomes = await poll_step(lambda: run(spec, ctx(prom)), timeout=15)
    assert outcomes[-1].ok, [o.summary for o in outcomes]
    assert outcomes[-1].data["samples"] == []
