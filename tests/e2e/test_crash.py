"""The remediator killed (SIGKILL) in the middle of a playbook and started again on the same store:
the run it was in is marked `interrupted` and escalated (its playbook is not safe to repeat), what
it had recorded is still there, nothing the run guards was done behind anyone's back, and an alert
Alertmanager sent while it was down is delivered and handled after the restart.

The run caught mid-playbook is the opt-in purge (rule jetstream-backlog-purge, shipped disabled and
switched on for this stack): it records the backlog, then waits for a person's approval before it
purges anything. Killing the remediator there is the worst moment: an approval pending, data at stake.
"""

from __future__ import annotations

from typing import Any

import pytest

from demo.processes import http_json, poll
from demo.stack import Stack, StackOptions
from e2e.stack import (
    alertmanager_metric,
    escalation_events,
    step,
    stream_messages,
    wait_firing,
    wait_remediation_alert,
)


@pytest.mark.timeout(150)
def test_killed_mid_playbook_is_interrupted_escalated_and_nothing_is_lost(stacks: Any) -> None:
    stack: Stack = stacks(StackOptions(enable_rules=("jetstream-backlog-purge",)))
    stack.router_admin("POST", "load", {"rate": 800})
    try:
        wait_firing(stack, ["JetStreamConsumerBacklogRising"])
        purge = stack.wait_execution(
            "the purge to wait for its approval",
            60,
            lambda r: r["state"] == "awaiting_approval",
            terminal=False,
            rule="jetstream-backlog-purge",
        )
    finally:
        stack.router_admin("POST", "load", {"rate": 0})
    diagnostics = stack.wait_execution("the backlog diagnostics", 30, lambda r: True, rule="jetstream-backlog")
    before = stack.execution(purge["id"])
    assert step(before, "backlog")["ok"]
    messages = stream_messages(stack)

    stack.kill_remediator()
    # While it is down, a new alert fires; Alertmanager's delivery fails and is retried.
    failed_before = alertmanager_metric(stack, "alertmanager_notifications_failed_total")
    stack.post_alerts(
        [
            {
                "labels": {
                    "alertname": "RouterDown",
                    "severity": "critical",
                    "remediation": "notify-only",
                    "job": "beamline-router",
                    "instance": "127.0.0.1:1",
                },
                "annotations": {"summary": "sent while the remediator was down"},
            }
        ]
    )
    poll(
        lambda: alertmanager_metric(stack, "alertmanager_notifications_failed_total") > failed_before,
        30,
        "Alertmanager to fail a delivery to the dead remediator",
        every=0.1,
    )
    stack.start_remediator()

    # The run it was in: interrupted (jetstream-purge is not idempotent), escalated, history kept.
    after = stack.execution(purge["id"])
    assert after["execution"]["state"] == "interrupted", after["execution"]
    assert "stopped while this execution was active" in after["execution"]["reason"]
    assert step(after, "backlog") == step(before, "backlog")
    assert "purge" not in {s["name"] for s in after["steps"]}
    assert any(e["message"].startswith("interrupted:") for e in escalation_events(after)), after["timeline"]
    alert = wait_remediation_alert(stack, purge["id"])
    assert alert["labels"]["severity"] == "critical" and "interrupted" in alert["annotations"]["summary"]
    # The pending approval cannot be given to a run that no longer exists, and nothing was purged.
    token = stack.operator_token_file.read_text().strip()
    status, _ = http_json(
        "POST",
        f"{stack.remediator_url}/api/v1/executions/{purge['id']}/approve",
        {},
        {"Authorization": f"Bearer {token}"},
    )
    assert status == 409
    assert stream_messages(stack) >= messages

    # Nothing lost: the run that had finished before the crash, and the alert sent during it.
    assert stack.execution(diagnostics["id"])["execution"]["state"] == diagnostics["state"]
    late = stack.wait_execution("the alert sent while it was down", 40, lambda r: True, alertname="RouterDown")
    assert late["rule"] == "notify-only"
    assert stack.execution(late["id"])["alert"]["annotations"]["summary"] == "sent while the remediator was down"
