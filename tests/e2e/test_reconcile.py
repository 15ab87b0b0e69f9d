"""Level-triggered: an alert Alertmanager never notifies about is still decided.

With the shipped group timings (group_wait 5s, group_interval 30s), NATS is killed, fixed by the
playbook, and killed again a few seconds later. Alertmanager lists NatsServerDown active again with
a new startsAt, but the group's set of firing alerts is the same at its next flush, so no webhook
comes until repeat_interval (1h). The remediator's reconciler reads Alertmanager's active alerts and
decides the new occurrence anyway: within its interval, long before the group's next flush.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from demo.processes import poll
from demo.stack import Stack, StackOptions
from e2e.stack import alertmanager_metric, escalation_events

RULE = "nats-process-down"
SHIPPED_GROUPING = StackOptions(group_wait="5s", group_interval="30s", repeat_interval="1h")


@pytest.mark.timeout(180)
def test_a_second_outage_no_webhook_reports_is_decided_by_reconciliation(stacks: Any) -> None:
    stack: Stack = stacks(SHIPPED_GROUPING)
    stack.kill_nats()
    first = stack.wait_execution("the first NATS restart", 60, lambda r: r["state"] != "refused", rule=RULE)
    assert first["state"] == "succeeded", stack.execution(first["id"])
    poll(lambda: stack.nats_pid() is not None, 10, "the restarted nats-server")

    stack.kill_nats()
    killed_again = time.monotonic()
    second = stack.wait_execution(
        "a decision for the second outage", 25, lambda r: r["id"] != first["id"], terminal=False, rule=RULE
    )
    decided_after_s = time.monotonic() - killed_again
    report = stack.execution(second["id"])
    first_alert = stack.execution(first["id"])["alert"]
    # a new occurrence of the same alert (same fingerprint, new startsAt) that only reconciliation brought
    assert report["alert"]["fingerprint"] == first_alert["fingerprint"]
    assert report["alert"]["starts_at"] != first_alert["starts_at"]
    assert report["alert"]["source"] == "reconcile", report["alert"]
    # the shipped rule's cooldown (10m) refuses a second restart, and a person is told once
    assert report["execution"]["state"] == "refused" and report["execution"]["refusal"] == "cooldown"
    poll(lambda: escalation_events(stack.execution(second["id"])), 10, "the refusal's escalation")
    assert len(escalation_events(stack.execution(second["id"]))) == 1
    # decided before the group's next flush (30s after the previous one) could have said anything:
    # Prometheus's detection (~1s) and a reconcile pass (every 5s) away, with room for a busy machine
    assert decided_after_s < 28, decided_after_s


@pytest.mark.timeout(180)
def test_an_outage_while_the_remediator_was_down_is_decided_when_it_starts(stacks: Any) -> None:
    """The remediator is down while NATS dies; Alertmanager's notifications to it fail. When it starts
    again it reads Alertmanager's active alerts before it serves, and the run happens."""
    stack: Stack = stacks()
    stack.kill_remediator()
    failed_before = alertmanager_metric(stack, "alertmanager_notifications_failed_total")
    stack.kill_nats()
    poll(
        lambda: alertmanager_metric(stack, "alertmanager_notifications_failed_total") > failed_before,
        30,
        "Alertmanager to fail to notify the stopped remediator",
    )
    stack.start_remediator()
    run = stack.wait_execution("the NATS restart after the start", 60, lambda r: r["state"] != "refused", rule=RULE)
    report = stack.execution(run["id"])
    assert report["execution"]["state"] == "succeeded", report
    assert report["alert"]["source"] == "reconcile", report["alert"]
    poll(lambda: stack.nats_pid() is not None, 10, "the restarted nats-server")
