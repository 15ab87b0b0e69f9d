"""NATS killed -> NatsServerDown fires in Prometheus -> Alertmanager posts it -> the shipped
nats-process-down playbook restarts NATS through the runbook scripts -> verification holds ->
Alertmanager sends the resolved notification -> the report says succeeded. The time from the fault
to the verified fix is measured and split (Prometheus, Alertmanager, the remediator)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from support.realprocs import require_binary
from support.sshd import SshHosts

from demo.processes import http_json
from demo.stack import REPO, Stack, StackOptions
from demo.timings import fix_timings
from e2e.stack import now, step, wait_alert_resolved, wait_firing

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


# The NATS host's side of the runbook scripts: each runs only when started through that host's sshd
# (SSH_CONNECTION ends with its port), records that it did, and runs the real script with the host's
# own settings; run any other way it refuses, so a run that succeeds ran none of them elsewhere.
REMOTE_SCRIPT = """#!/bin/sh
case "$SSH_CONNECTION" in
  *" {port}") ;;
  *) echo "$(basename "$0"): not started through the NATS host's sshd" >&2; exit 99 ;;
esac
echo "$(basename "$0") $SSH_CONNECTION" >> {record}
BEAMLINE_NATS_SERVER={nats_server} BEAMLINE_START_TIMEOUT=20 exec {scripts}/"$(basename "$0")" "$@"
"""


@pytest.mark.timeout(180)
def test_nats_killed_restarted_through_ssh_on_the_nats_host(stacks: Any, record_timings: Any, tmp_path: Path) -> None:
    hosts = SshHosts(tmp_path / "hosts")
    try:
        [nats_host] = hosts.start("nats")
        inventory = hosts.write_inventory(tmp_path / "hosts" / "inventory.yaml")
        remote_scripts = tmp_path / "nats-host" / "scripts"
        remote_scripts.mkdir(parents=True)
        record = tmp_path / "nats-host" / "ran.log"
        for name in ("nats_status.sh", "nats_stop.sh", "nats_start.sh"):
            script = remote_scripts / name
            script.write_text(
                REMOTE_SCRIPT.format(
                    port=nats_host.port,
                    record=record,
                    nats_server=require_binary("nats-server"),
                    scripts=REPO / "demo" / "scripts",
                )
            )
            script.chmod(0o755)
        options = StackOptions(
            params={"scripts_dir": str(remote_scripts)},
            settings={"inventory": str(inventory), "ssh": {"known_hosts": str(hosts.known_hosts)}},
        )
        stack: Stack = stacks(options)
        old_pid = stack.nats_pid()

        fault_at = now()
        stack.kill_nats()
        active = wait_firing(stack, NATS_ALERTS, instance=stack.router_instance)
        run = stack.wait_execution(
            "the NATS restart to finish", 60, lambda r: r["state"] != "refused", rule="nats-process-down"
        )
        report = stack.execution(run["id"])
        assert report["execution"]["state"] == "succeeded", report
        new_pid = stack.nats_pid()
        assert new_pid is not None and new_pid != old_pid, "NATS was restarted by the playbook"
        for name in ("status", "nats_stop", "nats_start"):
            assert step(report, name)["data"]["host"]["name"] == "nats", step(report, name)
        assert step(report, "status")["output"].splitlines()[0] == "Not Running"

        ran = [line.split()[0] for line in record.read_text().splitlines()]
        assert ran[:3] == ["nats_status.sh", "nats_stop.sh", "nats_start.sh"], ran
        assert set(ran[3:]) == {"nats_status.sh"}, ran  # the verification's status checks
        assert all(line.endswith(f" {nats_host.port}") for line in record.read_text().splitlines())

        alertname = report["alert"]["alertname"]
        timings = fix_timings(report, fault_at, active.get(alertname, min(active.values())), verify_interval=1.0)
        record_timings([f"NATS killed -> fixed through ssh ({alertname}), execution {run['id']}", *timings.lines()])
    finally:
        hosts.stop_all()
