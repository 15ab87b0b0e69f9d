"""SIGKILL in the middle of a playbook: after restart the run is `interrupted` with its finished steps
kept and an escalation recorded, or resumed when the playbook declares its steps idempotent."""

from __future__ import annotations

import json
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.flow import alert_body, write_config
from support.realprocs import poll_until
from support.service_proc import ServiceProcess

PLAYBOOK = """
name: slow
idempotent: {idempotent}
params:
  marker: {{pattern: "[a-z0-9-]{{1,40}}"}}
steps:
  - name: first
    type: exec
    argv: ["{python}", "-c", "print('first done')"]
  - name: second
    type: exec
    argv: ["{python}", "-c", "import pathlib,sys,time; p=pathlib.Path(sys.argv[1]); p.write_text(str(int(p.read_text())+1) if p.exists() else '1'); time.sleep(float(sys.argv[2]))", "{root}/{{{{ params.marker }}}}", "{{{{ labels.sleep | default('30') }}}}"]
    timeout: 60
"""

RULES = """
rules:
  - name: slow-fix
    match: ['alertname="NatsJetStreamUnhealthy"']
    playbook: slow
    params: {marker: "{{ labels.marker }}"}
    limits: {cooldown: 0, max_runs: 10, window: 1h}
"""


def get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def post(url: str, body: dict[str, Any]) -> int:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        return int(response.status)


def make_service(tmp_path: Path, idempotent: bool) -> ServiceProcess:
    playbook = PLAYBOOK.format(idempotent=str(idempotent).lower(), python=sys.executable, root=tmp_path)
    config = write_config(tmp_path, RULES, {"slow": playbook})
    return ServiceProcess(workdir=tmp_path, config=config)


@pytest.fixture
def processes() -> Iterator[list[ServiceProcess]]:
    started: list[ServiceProcess] = []
    yield started
    for proc in started:
        proc.stop()


def kill_during_second_step(service: ServiceProcess, marker: str, sleep: str) -> str:
    service.start()
    assert post(f"{service.url}/hooks/alertmanager", alert_body(marker=marker, sleep=sleep)) == 200
    marker_file = service.workdir / marker
    poll_until(lambda: marker_file.exists(), timeout=20, what="the second step to start")
    [run] = get(f"{service.url}/api/v1/executions")["executions"]
    assert run["state"] == "running"
    service.kill()
    return str(run["id"])


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
    poll_until(lambda: (tmp_path / "crash2").read_text() == "2", timeout=20, what="the resumed second step")
    poll_until(
        lambda: get(f"{service.url}/api/v1/executions/{execution_id}")["execution"]["state"] == "succeeded",
        timeout=20,
        what="the resumed run to succeed",
    )


def test_graceful_stop_mid_playbook_is_recovered_like_a_crash(tmp_path: Path, processes: list[ServiceProcess]) -> None:
    service = make_service(tmp_path, idempotent=False)
    processes.append(service)
    service.start()
    assert post(f"{service.url}/hooks/alertmanager", alert_body(marker="term1", sleep="8")) == 200
    poll_until(lambda: (tmp_path / "term1").exists(), timeout=20, what="the second step to start")
    assert service.terminate() == 0
    service.start()
    [run] = get(f"{service.url}/api/v1/executions")["executions"]
    report = get(f"{service.url}/api/v1/executions/{run['id']}")
    assert report["execution"]["state"] == "interrupted"
    assert [(s["name"], s["status"]) for s in report["steps"]] == [("first", "ok"), ("second", "cancelled")]
