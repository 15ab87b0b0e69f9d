"""Alertmanager re-sends a firing alert every repeat_interval (3 s here): each re-send lands on the
same alert occurrence and the remediator runs its playbook once."""

from __future__ import annotations

from typing import Any

import pytest

from demo.processes import poll
from demo.stack import Stack, StackOptions
from e2e.stack import alertmanager_metric, wait_firing


@pytest.mark.timeout(120)
def test_repeated_notifications_make_one_execution(stacks: Any) -> None:
    stack: Stack = stacks(StackOptions(repeat_interval="3s"))
    result = stack.run_script("router_stop.sh")  # RouterDown: notify-only, and it keeps firing
    assert result.returncode == 0, result.stderr
    wait_firing(stack, ["RouterDown"])

    def delivered_three_times() -> dict[str, Any] | None:
        runs = stack.executions(alertname="RouterDown")
        if not runs:
            return None
        report = stack.execution(runs[-1]["id"])
        # receive_count moves when the delivery is committed, the repeat event once it is dispatched
        repeats = [e for e in report["timeline"] if e["kind"] == "repeat"]
        return report if report["alert"]["receive_count"] >= 3 and len(repeats) >= 2 else None

    report = poll(delivered_three_times, 40, "Alertmanager to deliver RouterDown three times", every=0.2)
    runs = stack.executions(alertname="RouterDown")
    assert len(runs) == 1, runs
    assert runs[0]["rule"] == "notify-only" and runs[0]["state"] == "succeeded"
    assert "alert delivered again (3 deliveries)" in [e["message"] for e in report["timeline"]]
    assert alertmanager_metric(stack, "alertmanager_notifications_total") >= 3
    assert stack.executions(state="refused") == []
