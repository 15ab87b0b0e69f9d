"""An alert storm from Alertmanager: thirty CircuitBreakerOpen alerts at once (posted to
Alertmanager's API, as Prometheus would), each its own notification group. The storm guard admits
`storm_max_admissions` runs in its window, refuses the rest with reason `storm`, and escalates the
storm once: one summary page, not one per alert."""

from __future__ import annotations

from typing import Any

import pytest

from demo.processes import poll
from demo.stack import Stack, StackOptions
from e2e.stack import escalation_events, remediation_alerts

ALERTS = 30
LIMIT = 5


@pytest.mark.timeout(120)
def test_alert_storm_is_held_by_the_storm_guard_with_one_summary_escalation(stacks: Any) -> None:
    stack: Stack = stacks(StackOptions(storm_max_admissions=LIMIT, storm_window_seconds=120))
    stack.post_alerts(
        [
            {
                "labels": {
                    "alertname": "CircuitBreakerOpen",
                    "severity": "warning",
                    "remediation": "2",
                    "job": "beamline-router",
                    "instance": stack.router_instance,
                    "tenant": f"storm_{n:02d}",
                    "provider": "openai",
                },
                "annotations": {"summary": f"Circuit breaker open for storm_{n:02d}/openai"},
            }
            for n in range(ALERTS)
        ]
    )

    runs = poll(
        lambda: (rows := stack.executions(rule="circuit-breaker-open")) and len(rows) >= ALERTS and rows,
        60,
        f"{ALERTS} decisions for the storm's alerts",
        every=0.2,
    )
    assert len(runs) == ALERTS, "one decision per alert"
    admitted = [r for r in runs if r["state"] != "refused"]
    refused = [r for r in runs if r["state"] == "refused"]
    assert len(admitted) == LIMIT
    assert {r["refusal"] for r in refused} == {"storm"}
    assert all("storm guard" in r["reason"] for r in refused)

    # Exactly one of the refusals escalated: the storm's summary, naming the limit.
    storm_escalations = [
        (r["id"], e["message"])
        for r in refused
        for e in escalation_events(stack.execution(r["id"]))
        if "storm guard" in e["message"]
    ]
    assert len({execution_id for execution_id, _ in storm_escalations}) == 1, storm_escalations
    assert f"(limit {LIMIT})" in storm_escalations[0][1]

    def storm_pages() -> list[dict[str, Any]]:
        return [a for a in remediation_alerts(stack) if "storm guard" in a["annotations"]["summary"]]

    poll(storm_pages, 20, "the storm's RemediationFailed alert in Alertmanager", every=0.2)
    # The admitted runs finish (these synthetic breakers are unknown to the router, so they
    # escalate on their own); the storm still has exactly one page.
    poll(
        lambda: all(
            r["state"] in ("succeeded", "escalated", "failed")
            for r in stack.executions(rule="circuit-breaker-open")
            if r["state"] != "refused"
        ),
        60,
        "the admitted runs to finish",
        every=0.2,
    )
    assert len(storm_pages()) == 1
