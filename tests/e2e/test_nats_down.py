"""NATS killed -> NatsServerDown fires in Prometheus -> Alertmanager posts it -> the shipped
nats-process-down playbook restarts NATS through the runbook scripts -> verification holds ->
Alertmanager sends the resolved notification -> the report says succeeded. The time from the fault
to the verified fix is measured and split (Prometheus, Alertmanager, the remediator)."""

from __future__ import annotations

from typing import Any

import pytest

from demo.processes import http_json
from demo.stack import Stack
from demo.timings import fix_timings
from e2e.stack import now, step, wait_alert_resolved, wait_firing

OVERHEAD_BUDGET_S = 0.050
NATS_ALERTS = ("NatsServerDown", "NatsConnectionLost")


@pytest.mark.timeout(150)
def test_nats_killed_restarted_verified_resolved(stacks: Any, record_timings: Any) -> None:
    stack: Stack = stacks()
    old_pid = stack.nats_pid()

    fault_at = now()
    stack.kill_nats()
    active = wait_firing(stack, NATS_ALERTS, instance=stack.router_instance)

    run = stack.wait_execution(
        "the NATS restart to finish", 60, lambda r: r["state"] != "refused", rule="nats-process-down"
    )
    report = stack.execution(run["id"])
    execution = report["execution"]
    assert execution["state"] == "succeeded", report
    assert execution["reason"] == "verified"
    assert report["alert"]["alertname"] in NATS_ALERTS
    assert step(report, "status")["output"].splitlines()[0] == "Not Running"  # the evidence, before
    assert step(report, "nats_stop")["ok"] and step(report, "nats_start")["ok"]
    polls = [e for e in report["timeline"] if e["kind"] == "verify"]
    assert polls and polls[-1]["data"]["held"]
    new_pid = stack.nats_pid()
    assert new_pid is not None and new_pid != old_pid, "NATS was restarted by the playbook"
    assert stack.router_metrics()["router_nats_connection_status"] == 1

    # Prometheus sees the fix, Alertmanager sends the resolved notification, the report has it.
    resolved = wait_alert_resolved(stack, run["id"], timeout=30)
    assert resolved["alert"]["ends_at"]
    assert resolved["execution"]["state"] == "succeeded"
    status, page = http_json("GET", stack.report_url(run["id"]))
    assert status == 200 and "succeeded" in str(page)

    alertname = report["alert"]["alertname"]
    timings = fix_timings(report, fault_at, active.get(alertname, min(active.values())), verify_interval=1.0)
    record_timings([f"NATS killed -> fixed ({alertname}), execution {run['id']}", *timings.lines()])
    assert timings.overhead_s < OVERHEAD_BUDGET_S, timings.lines()
