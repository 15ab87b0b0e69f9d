"""`remediator demo` (also `python -m demo`): starts the stack, injects each runbook fault in turn, prints
what happens as it happens and the report links, and stops everything by PID when it ends, on
Ctrl-C or on SIGTERM."""

from __future__ import annotations

import argparse
import contextlib
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

from demo.processes import StackError, log_tail, parse_time, poll
from demo.stack import INSTALL_HINT, Ports, Stack, find_binaries
from demo.timings import fix_timings
from service.store import TERMINAL_STATES


class Interrupted(Exception):
    """SIGTERM or SIGHUP: stop the tour and clean up, as Ctrl-C does."""


@dataclass
class ScenarioResult:
    number: int
    name: str
    expected: str
    ok: bool
    outcome: str
    links: list[str] = field(default_factory=list)

    def line(self) -> str:
        verdict = "OK" if self.ok else "UNEXPECTED"
        links = "".join(f" {link}" for link in self.links)
        return f"scenario {self.number} {self.name}: {verdict} (expected {self.expected}): {self.outcome}{links}"


def _short(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


class Narrator:
    """Prints what changed since it last looked: alerts firing in Prometheus, executions and their
    steps, escalations, resolved notifications. Called from every wait of the tour."""

    def __init__(self, stack: Stack, out: Any = None, every: float = 0.25) -> None:
        self.stack = stack
        self.out = out if out is not None else sys.stdout
        self.every = every
        self.t0 = time.monotonic()
        self.active_at: dict[str, datetime] = {}  # alertname -> activeAt, first seen
        self._last = 0.0
        self._alerts: set[tuple[str, str]] = set()
        self._states: dict[str, str] = {}
        self._steps: dict[str, int] = {}
        self._escalations: dict[str, int] = {}
        self._alert_status: dict[str, str] = {}

    def say(self, message: str) -> None:
        print(f"[{time.monotonic() - self.t0:7.1f}s] {message}", file=self.out, flush=True)

    def tick(self, force: bool = False) -> None:
        if not force and time.monotonic() - self._last < self.every:
            return
        self._last = time.monotonic()
        with contextlib.suppress(StackError, KeyError, TypeError, ValueError):
            self._alerts_changed()
        with contextlib.suppress(StackError, KeyError, TypeError, ValueError):
            self._executions_changed()

    def _alerts_changed(self) -> None:
        now_firing: set[tuple[str, str]] = set()
        for alert in self.stack.prometheus_alerts():
            if alert["state"] != "firing":
                continue
            labels = alert["labels"]
            detail = "/".join(labels[k] for k in ("tenant", "provider", "consumer") if k in labels)
            key = (labels["alertname"], detail)
            now_firing.add(key)
            if key not in self._alerts:
                self.active_at.setdefault(labels["alertname"], parse_time(alert["activeAt"]))
                self.say(f"Prometheus: alert {key[0]}{' ' + detail if detail else ''} firing")
        for name, detail in sorted(self._alerts - now_firing):
            self.say(f"Prometheus: alert {name}{' ' + detail if detail else ''} no longer firing")
        self._alerts = now_firing

    def _executions_changed(self) -> None:
        for row in reversed(self.stack.executions()):
            execution_id, state = row["id"], row["state"]
            before = self._states.get(execution_id)
            if before is None:
                if state == "refused":
                    self.say(
                        f"remediator: {row['alertname']} -> rule {row['rule']}: refused ({_short(row['reason'], 120)})"
                    )
                else:
                    self.say(
                        f"remediator: {row['alertname']} -> rule {row['rule']}, playbook {row['playbook']}, "
                        f"target {row['target']}: remediation started ({execution_id})"
                    )
            self._states[execution_id] = state
            if state == "refused" and before is not None:
                continue
            if before in TERMINAL_STATES and self._alert_status.get(execution_id) == "resolved":
                continue
            report = self.stack.execution(execution_id)
            steps = report["steps"]
            for step in steps[self._steps.get(execution_id, 0) :]:
                self.say(
                    f"  {execution_id}: step {step['phase']}/{step['name']}: {step['status']}"
                    f" ({float(step['duration_s']):.2f}s) {_short(step['summary'], 110)}"
                )
            self._steps[execution_id] = len(steps)
            notes = [e for e in report["timeline"] if e["kind"] in ("escalation", "delivery")]
            for event in notes[self._escalations.get(execution_id, 0) :]:
                self.say(f"  {execution_id}: {event['kind']}: {_short(event['message'], 200)}")
            self._escalations[execution_id] = len(notes)
            if state != before and state != "refused" and (before is not None or state not in ("queued", "running")):
                reason = f" ({_short(row['reason'], 140)})" if row["reason"] else ""
                self.say(f"  {execution_id}: state -> {state}{reason}")
                if state in TERMINAL_STATES:
                    self.say(f"  report: {self.stack.report_url(execution_id)}")
            status = (report.get("alert") or {}).get("status", "")
            if self._alert_status.get(execution_id) == "firing" and status == "resolved":
                self.say(f"Alertmanager: resolved notification for {row['alertname']} received")
            self._alert_status[execution_id] = status


def _tour_nats(stack: Stack, narrator: Narrator) -> ScenarioResult:
    result = ScenarioResult(1, "NATS server killed", "restarted, verified, resolved", False, "")
    fault_at = datetime.now(UTC)
    pid = stack.kill_nats()
    narrator.say(f"fault: nats-server (pid {pid}) killed with SIGKILL")
    run = stack.wait_execution(
        "the NATS restart", 90, lambda r: r["state"] != "refused", tick=narrator.tick, rule="nats-process-down"
    )
    result.links.append(stack.report_url(run["id"]))
    if run["state"] != "succeeded":
        result.outcome = f"{run['state']}: {_short(run['reason'])}"
        return result
    report = poll(
        lambda: (r := stack.execution(run["id"]))["alert"]["status"] == "resolved" and r,
        45,
        "the resolved notification",
        every=0.2,
        tick=narrator.tick,
    )
    result.ok = True
    result.outcome = "succeeded (verified), resolved by Alertmanager"
    alertname = report["alert"]["alertname"]
    if alertname in narrator.active_at:
        timings = fix_timings(report, fault_at, narrator.active_at[alertname], verify_interval=1.0)
        result.outcome += (
            f"; fault -> verified fix {timings.total_s:.1f}s (Prometheus {timings.detection_s:.1f}s, "
            f"Alertmanager {timings.delivery_s:.1f}s, remediator {timings.remediator_s:.1f}s, "
            f"of which its own overhead {timings.overhead_s * 1000:.0f} ms)"
        )
    return result


def _tour_breaker_healthy(stack: Stack, narrator: Narrator) -> ScenarioResult:
    result = ScenarioResult(2, "circuit breaker open, provider healthy", "half-open, then closed", False, "")
    stack.router_admin("POST", "faults/circuit_breaker/tenant_a/openai/open")
    narrator.say("fault: circuit breaker tenant_a/openai forced open (the provider is healthy)")
    run = stack.wait_execution(
        "the breaker remediation",
        90,
        lambda r: r["state"] != "refused" and r["target"].endswith("/tenant_a/openai"),
        tick=narrator.tick,
        rule="circuit-breaker-open",
    )
    result.links.append(stack.report_url(run["id"]))
    status = stack.router_admin("GET", "circuit_breaker/tenant_a/openai/status")
    result.ok = run["state"] == "succeeded" and status.get("state") == "closed"
    result.outcome = f"{run['state']}, breaker {status.get('state')}"
    return result


def _tour_breaker_failing(stack: Stack, narrator: Narrator) -> ScenarioResult:
    result = ScenarioResult(
        3, "circuit breaker open, provider failing", "left open, escalated (RemediationFailed)", False, ""
    )
    stack.router_admin("POST", "faults/provider/anthropic", {"health": "healthy", "extra_latency_ms": 3000})
    narrator.say("fault: provider anthropic answers in 3 s ...")
    poll(
        lambda: stack.query(
            f'router_provider_latency_p95_ms{{instance="{stack.router_instance}",provider="anthropic"}} > 1000'
        ),
        30,
        "Prometheus to see anthropic's p95 above 1 s",
        every=0.2,
        tick=narrator.tick,
    )
    stack.router_admin("POST", "faults/provider/anthropic", {"health": "failing"})
    narrator.say("fault: ... and now fails every request: its circuit breakers open")
    run = stack.wait_execution(
        "the breaker remediation",
        90,
        lambda r: r["state"] != "refused" and r["target"].endswith("/anthropic"),
        tick=narrator.tick,
        rule="circuit-breaker-open",
    )
    result.links.append(stack.report_url(run["id"]))
    escalated = poll(
        lambda: stack.alertmanager_alerts('alertname="RemediationFailed"', f'execution_id="{run["id"]}"'),
        30,
        "the RemediationFailed alert in Alertmanager",
        every=0.2,
        tick=narrator.tick,
    )
    result.ok = run["state"] == "escalated" and bool(escalated)
    result.outcome = f"{run['state']}, RemediationFailed in Alertmanager for {run['target']}"
    stack.router_admin("POST", "faults/reset")
    narrator.say("faults reset: provider healthy, breakers closed")
    return result


def _tour_backlog(stack: Stack, narrator: Narrator) -> ScenarioResult:
    result = ScenarioResult(4, "JetStream backlog rising", "diagnosed, escalated with the pending count", False, "")
    stack.router_admin("POST", "load", {"rate": 800})
    narrator.say("fault: 800 msg/s published to DECIDE; the consumer handles 200 msg/s")
    try:
        run = stack.wait_execution(
            "the backlog diagnostics",
            120,
            lambda r: r["state"] != "refused",
            tick=narrator.tick,
            rule="jetstream-backlog",
        )
    finally:
        stack.router_admin("POST", "load", {"rate": 0})
    result.links.append(stack.report_url(run["id"]))
    report = stack.execution(run["id"])
    info = next((s for s in report["steps"] if s["name"] == "consumer_info"), None)
    pending = (info or {}).get("data", {}).get("num_pending")
    escalations = [e["message"] for e in report["timeline"] if e["kind"] == "escalation"]
    result.ok = (
        run["state"] == "succeeded" and pending is not None and any(f"{pending} pending" in m for m in escalations)
    )
    result.outcome = f"{run['state']}, escalated: {pending} messages pending on DECIDE/router_decide_consumer"
    return result


TOUR: tuple[Callable[[Stack, Narrator], ScenarioResult], ...] = (
    _tour_nats,
    _tour_breaker_healthy,
    _tour_breaker_failing,
    _tour_backlog,
)


def _raise_interrupted(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(signal.Signals(signum).name)


def run_demo(ports_base: int | None, keep: bool, out: Any = None) -> int:
    """The whole tour; 0 when every scenario ended as expected. Everything started is stopped by PID
    and the temporary directory removed at the end, on Ctrl-C (SIGINT), SIGTERM and SIGHUP too."""
    out = out if out is not None else sys.stdout

    def say(message: str) -> None:
        print(message, file=out, flush=True)

    try:
        find_binaries()
        ports = Ports.from_base(ports_base) if ports_base is not None else Ports.free()
        ports.check_free()
    except StackError as exc:
        say(f"remediator demo: {exc}")
        return 2
    previous = {s: signal.signal(s, _raise_interrupted) for s in (signal.SIGTERM, signal.SIGHUP)}
    workdir = Path(tempfile.mkdtemp(prefix="remediator-demo-"))
    stack: Stack | None = None
    code = 1
    try:
        say(
            "remediator demo: starting nats-server, the router, Prometheus, Alertmanager and the remediator"
            f" in {workdir}"
        )
        stack = Stack(workdir, ports)
        stack.start()
        pids = ", ".join(f"{name} pid {pid}" for name, pid in stack.pids().items())
        say(f"stack up: {pids}")
        say(f"  remediator   {stack.remediator_url}/  (reports: {stack.remediator_url}/executions/ID)")
        say(f"  Prometheus   {stack.prometheus_url}/alerts")
        say(f"  Alertmanager {stack.alertmanager_url}/#/alerts")
        say(f"  router       {stack.router_url}/metrics, NATS {stack.nats_url} (monitoring {stack.nats_monitor_url})")
        narrator = Narrator(stack, out)
        results: list[ScenarioResult] = []
        for scenario in TOUR:
            try:
                result = scenario(stack, narrator)
            except StackError as exc:
                number = len(results) + 1
                result = ScenarioResult(number, scenario.__name__.removeprefix("_tour_"), "-", False, f"error: {exc}")
            narrator.tick(force=True)
            say(f"==> {result.line()}")
            results.append(result)
            with contextlib.suppress(StackError):
                stack.wait_baseline(timeout=60)
        say("")
        say(f"tour finished: {sum(r.ok for r in results)} of {len(results)} scenarios as expected")
        for result in results:
            say(f"  {result.line()}")
        code = 0 if all(r.ok for r in results) else 1
        if keep:
            say("--keep: everything stays up; Ctrl-C (or SIGTERM) stops it and removes " + str(workdir))
            signal.pause()
    except (KeyboardInterrupt, Interrupted) as exc:
        say(f"\nremediator demo: interrupted ({str(exc) or 'SIGINT'}): stopping everything")
        code = 130
    except StackError as exc:
        say(f"remediator demo: {exc}")
        if stack is not None:
            for name, path in stack.logs():
                say(f"--- {name} log ({path}), last lines:\n{log_tail(path, 2000)}")
    finally:
        # A second Ctrl-C must not leave servers behind: clean-up runs to its end (each stop is bounded).
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        try:
            if stack is not None:
                stack.stop()
        except StackError as exc:
            say(f"remediator demo: {exc}")
            code = code or 1
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        say(f"remediator demo: stopped everything, removed {workdir}")
    return code


def build_parser() -> argparse.ArgumentParser:
    """`remediator demo`'s arguments (docs/cli.md lists them; tests/test_cli.py holds it to them)."""
    parser = argparse.ArgumentParser(
        prog="remediator demo",
        description="Starts nats-server, the simulated router, Prometheus, Alertmanager and the remediator on "
        f"loopback, injects each fault in turn and prints what happens. Needs: {INSTALL_HINT}.",
    )
    parser.add_argument(
        "--ports-base",
        type=int,
        default=None,
        metavar="PORT",
        help="use PORT..PORT+6 (NATS, NATS monitoring, router TCP, router HTTP, Prometheus, "
        "Alertmanager, remediator); default: free ports",
    )
    parser.add_argument("--keep", action="store_true", help="leave everything running after the tour until Ctrl-C")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m demo` and `remediator demo`."""
    args = build_parser().parse_args(argv)
    return run_demo(args.ports_base, args.keep)
