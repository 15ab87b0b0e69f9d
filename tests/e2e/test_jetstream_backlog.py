"""JetStream backlog rising (T-OPS-04 §1C): more published than the consumer processes; the shipped
jetstream-backlog playbook gathers /jsz, the consumer's state and the rates, purges nothing, and
escalates with the pending count, which the report and the RemediationFailed alert carry."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

from demo.stack import Stack
from e2e.stack import escalation_events, step, stream_messages, wait_firing, wait_remediation_alert


@pytest.mark.timeout(120)
def test_backlog_is_diagnosed_and_escalated_with_the_pending_count(stacks: Any) -> None:
    stack: Stack = stacks()
    stack.router_admin("POST", "load", {"rate": 800})  # the consumer handles 200 msg/s
    try:
        wait_firing(stack, ["JetStreamConsumerBacklogRising"], consumer="router_decide_consumer")
        run = stack.wait_execution(
            "the backlog diagnostics", 60, lambda r: r["state"] != "refused", rule="jetstream-backlog"
        )
    finally:
        stack.router_admin("POST", "load", {"rate": 0})
    report = stack.execution(run["id"])
    assert report["execution"]["state"] == "succeeded", report  # diagnostics ran; the page is the escalation
    pending = step(report, "consumer_info")["data"]["num_pending"]
    assert pending > 1000
    assert step(report, "jsz")["ok"]
    assert step(report, "processing_rate")["ok"] and step(report, "publish_rate")["ok"]
    [escalation] = [e["message"] for e in escalation_events(report) if "JetStream backlog" in e["message"]][:1]
    assert f"{pending} pending" in escalation and "scale up" in escalation
    assert stream_messages(stack) >= pending, "nothing was purged"

    # The Markdown report a person reads, from the CLI, and the alert in Alertmanager.
    config = stack.remediator_dir / "remediator.yaml"
    markdown = subprocess.run(
        [sys.executable, "-m", "service.cli", "report", run["id"], "--format", "md", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    assert f"{pending} pending" in markdown
    alert = wait_remediation_alert(stack, run["id"])
    assert f"{pending} pending" in alert["annotations"]["summary"]
