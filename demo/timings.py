"""What the NATS scenario measured: fault -> verified fix, split by who spent the time."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from demo.processes import parse_time


def _seconds(a: datetime, b: datetime) -> float:
    return (b - a).total_seconds()


@dataclass(frozen=True)
class FixTimings:
    """Fault -> verified fix, split by who spent the time.

    detection: the fault until Prometheus has the alert firing (activeAt);
    delivery: until the remediator received Alertmanager's notification (group_wait included);
    remediator: until the fix was verified, of which `steps` and `verification` were the playbook's
    own work and waiting (its step durations, its verification checks and the intervals between
    polls) and `overhead` everything else (dispatch, admission, the store's writes, scheduling)."""

    detection_s: float
    delivery_s: float
    remediator_s: float
    receive_to_first_step_s: float
    steps_s: float
    verification_s: float
    overhead_s: float
    overhead_parts: Mapping[str, float] = field(default_factory=dict)

    @property
    def total_s(self) -> float:
        return self.detection_s + self.delivery_s + self.remediator_s

    def lines(self) -> list[str]:
        parts = ", ".join(f"{k} {v * 1000:.1f} ms" for k, v in self.overhead_parts.items())
        return [
            f"fault -> verified fix: {self.total_s:.2f}s",
            f"  Prometheus detection (fault -> alert active):        {self.detection_s:6.2f}s",
            f"  Alertmanager delivery (active -> webhook received):  {self.delivery_s:6.2f}s",
            f"  remediator (received -> verified):                   {self.remediator_s:6.2f}s",
            f"    received -> first step started:                    {self.receive_to_first_step_s * 1000:6.1f} ms",
            f"    steps:                                             {self.steps_s:6.2f}s",
            f"    verification (checks and poll intervals):          {self.verification_s:6.2f}s",
            f"    remediator's own overhead:                         {self.overhead_s * 1000:6.1f} ms ({parts})",
        ]


def fix_timings(
    report: Mapping[str, Any], fault_at: datetime, active_at: datetime, verify_interval: float
) -> FixTimings:
    """The split of one succeeded execution's report (GET /api/v1/executions/{id})."""
    execution, occurrence = report["execution"], report["alert"]
    received = parse_time(occurrence["first_received_at"])
    created = parse_time(execution["created_at"])
    states = [(e["message"].split(":", 1)[0], parse_time(e["at"])) for e in report["timeline"] if e["kind"] == "state"]
    running = next(at for state, at in states if state == "running")
    verifying = next((at for state, at in states if state == "verifying"), None)
    done = next(at for state, at in states if state == "succeeded")
    steps = [s for s in report["steps"] if s["phase"] == "steps"]
    parts: dict[str, float] = {"dispatch": _seconds(received, created), "start": _seconds(created, running)}
    steps_s = sum(float(s["duration_s"]) for s in steps)
    cursor = running
    gaps = 0.0
    for step in steps:
        started = parse_time(step["started_at"])
        gaps += _seconds(cursor, started)
        cursor = datetime.fromtimestamp(started.timestamp() + float(step["duration_s"]), UTC)
    parts["between steps"] = gaps
    first_step = parse_time(steps[0]["started_at"]) if steps else running
    verification_s = 0.0
    if verifying is not None:
        parts["before verification"] = _seconds(cursor, verifying)
        polls = [e for e in report["timeline"] if e["kind"] == "verify" and e["data"].get("phase") == "verify"]
        # Polls start every interval (the checks run inside it), so the waiting is the intervals
        # before the last poll plus the last poll's own checks.
        last_checks_s = sum(float(c["duration_s"]) for c in polls[-1]["data"].get("checks", [])) if polls else 0.0
        verification_s = verify_interval * max(0, len(polls) - 1) + last_checks_s
        parts["verification"] = _seconds(verifying, done) - verification_s
    else:
        parts["after steps"] = _seconds(cursor, done)
    return FixTimings(
        detection_s=_seconds(fault_at, active_at),
        delivery_s=_seconds(active_at, received),
        remediator_s=_seconds(received, done),
        receive_to_first_step_s=_seconds(received, first_step),
        steps_s=steps_s,
        verification_s=verification_s,
        overhead_s=sum(parts.values()),
        overhead_parts=parts,
    )
