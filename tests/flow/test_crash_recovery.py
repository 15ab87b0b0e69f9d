"""SIGKILL in the middle of a playbook: after restart the run is `interrupted` with its finished steps
kept and an escalation recorded, or resumed when the playbook declares its steps idempotent."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.crash import get, kill_during_second_step, make_service, post
from support.flow import alert_body
from support.service_proc import ServiceProcess

from demo.processes import pid_alive, poll


@pytest.fixture
def processes() -> Iterator[list[ServiceProcess]]:
    started: list[ServiceProcess] = []
    yield started
    for proc in started:
        proc.stop()


def test_killed_mid_playbook_is_interrupted_with_finished_steps_kept(
    tmp_path: Path, processes: list[ServiceProcess]
) -> None:
    service = make_service(tmp_path, idempotent=False)
    processes.append(service)
    execution_id = kill_during_second_step(service, "crash1", sleep="8")
    service.start()
    report = get(f"{service.url}/api/v1/executions/{execution_id}")
    assert report["execution"]["state"] == "interrupted"
    assert [s["name"] for s in report["steps"]] == ["first"]  # finished before the kill, kept
    assert report["steps"][0]["output"].strip() == "first done"
    assert any(e["kind"] == "escalation" and "interrupted" in e["message"] for e in report["timeline"])
    assert (tmp_path / "crash1").read_text() == "1"  # not run again


def test_killed_idempotent_playbook_ends_the_old_step_and_resumes_where_it_stopped(
    tmp_path: Path, processes: list[ServiceProcess]
) -> None:
    service = make_service(tmp_path, idempotent=True)
    processes.append(service)
    execution_id = kill_during_second_step(service, "crash2", sleep="3")
    [old_step] = (tmp_path / "crash2.pids").read_text().split()
    assert pid_alive(int(old_step))  # its own session: the step outlived the SIGKILLed service
    service.start()
    report = get(f"{service.url}/api/v1/executions/{execution_id}")
    # before the run resumed, the old second step's group was ended: it never runs beside the new one
    [ended] = [e["message"] for e in report["timeline"] if e["kind"] == "recovery"]
    assert f"step second was still running after the restart: its process group {old_step} ended" in ended
    assert not pid_alive(int(old_step))
    [resumed] = [e["message"] for e in report["timeline"] if e["kind"] == "resume"]
    assert "after 1 completed step(s): first" in resumed
    poll(lambda: (tmp_path / "crash2").read_text() == "2", timeout=20, what="the resumed second step")
    final = poll(
        lambda: _finished(service, execution_id),
        timeout=20,
        what="the resumed run to succeed",
    )
    assert final["execution"]["state"] == "succeeded"
    assert [s["name"] for s in final["steps"] if s["status"] != "cancelled"] == ["first", "second"]  # first not rerun


VERIFY = """
verify:
  interval: 0.2
  within: 60s
  checks:
    - type: exec
      argv: ["test", "-e", "{root}/verified"]
"""


def test_killed_during_verification_resumes_verifying_without_running_a_step_again(
    tmp_path: Path, processes: list[ServiceProcess]
) -> None:
    """Even for a playbook whose steps are not idempotent: verification only reads."""
    service = make_service(tmp_path, idempotent=False, verify=VERIFY.format(root=tmp_path))
    processes.append(service)
    service.start()
    assert post(f"{service.url}/hooks/alertmanager", alert_body(marker="verify1", sleep="0")) == 200
    [run] = poll(lambda: _in_state(service, "verifying"), timeout=20, what="the run to verify")
    service.kill()
    (tmp_path / "verified").touch()  # the fix holds while the service is down
    service.start()
    final = poll(lambda: _finished(service, run["id"]), timeout=20, what="the resumed verification")
    assert (final["execution"]["state"], final["execution"]["reason"]) == ("succeeded", "verified")
    assert (tmp_path / "verify1").read_text() == "1"  # the steps ran once
    [resumed] = [e["message"] for e in final["timeline"] if e["kind"] == "resume"]
    assert "verification" in resumed


def _finished(service: ServiceProcess, execution_id: str) -> dict[str, Any] | None:
    report: dict[str, Any] = get(f"{service.url}/api/v1/executions/{execution_id}")
    return report if report["execution"]["state"] in ("succeeded", "failed", "escalated") else None


def _in_state(service: ServiceProcess, state: str) -> list[dict[str, Any]] | None:
    runs = get(f"{service.url}/api/v1/executions")["executions"]
    return runs if runs and all(r["state"] == state for r in runs) else None


def test_graceful_stop_mid_playbook_is_recovered_like_a_crash(tmp_path: Path, processes: list[ServiceProcess]) -> None:
    service = make_service(tmp_path, idempotent=False)
    processes.append(service)
    service.start()
    assert post(f"{service.url}/hooks/alertmanager", alert_body(marker="term1", sleep="8")) == 200
    poll(lambda: (tmp_path / "term1").exists(), timeout=20, what="the second step to start")
    assert service.terminate() == 0
    service.start()
    [run] = get(f"{service.url}/api/v1/executions")["executions"]
    report = get(f"{service.url}/api/v1/executions/{run['id']}")
    assert report["execution"]["state"] == "interrupted"
    assert [(s["name"], s["status"]) for s in report["steps"]] == [("first", "ok"), ("second", "cancelled")]
