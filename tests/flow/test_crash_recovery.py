"""SIGKILL in the middle of a playbook: after restart the run is `interrupted` with its finished steps
kept and an escalation recorded, or resumed when the playbook declares its steps idempotent."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from support.crash import get, kill_during_second_step, make_service, post
from support.flow import alert_body
from support.service_proc import ServiceProcess

from demo.processes import poll


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


def test_killed_idempotent_playbook_is_resumed(tmp_path: Path, processes: list[ServiceProcess]) -> None:
    service = make_service(tmp_path, idempotent=True)
    processes.append(service)
    execution_id = kill_during_second_step(service, "crash2", sleep="3")
    service.start()
    report = get(f"{service.url}/api/v1/executions/{execution_id}")
    assert any(e["kind"] == "resume" for e in report["timeline"])
    poll(lambda: (tmp_path / "crash2").read_text() == "2", timeout=20, what="the resumed second step")
    poll(
        lambda: get(f"{service.url}/api/v1/executions/{execution_id}")["execution"]["state"] == "succeeded",
        timeout=20,
        what="the resumed run to succeed",
    )


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
