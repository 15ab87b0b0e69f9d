"""A remediator killed in the middle of a playbook: the scenario the crash tests share (a slow
second step that counts its starts in a marker file and appends its pid to `<marker>.pids`)."""

from __future__ import annotations

import json
import sys
import urllib.request
from pathlib import Path
from typing import Any

from demo.processes import poll
from support.flow import alert_body, write_config
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
    argv: ["{python}", "-c", "import os,pathlib,sys,time; p=pathlib.Path(sys.argv[1]); p.write_text(str(int(p.read_text())+1) if p.exists() else '1'); open(sys.argv[1]+'.pids','a').write(f'{{os.getpid()}} '); time.sleep(float(sys.argv[2]))", "{root}/{{{{ params.marker }}}}", "{{{{ labels.sleep | default('30') }}}}"]
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


def make_service(tmp_path: Path, idempotent: bool, verify: str = "") -> ServiceProcess:
    playbook = PLAYBOOK.format(idempotent=str(idempotent).lower(), python=sys.executable, root=tmp_path) + verify
    config = write_config(tmp_path, RULES, {"slow": playbook})
    return ServiceProcess(workdir=tmp_path, config=config)


def kill_during_second_step(service: ServiceProcess, marker: str, sleep: str) -> str:
    service.start()
    assert post(f"{service.url}/hooks/alertmanager", alert_body(marker=marker, sleep=sleep)) == 200
    marker_file = service.workdir / marker
    poll(lambda: marker_file.exists(), timeout=20, what="the second step to start")
    [run] = get(f"{service.url}/api/v1/executions")["executions"]
    assert run["state"] == "running"
    service.kill()
    return str(run["id"])
