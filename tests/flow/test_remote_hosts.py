"""The flow with remote targets, in process, against real OpenSSH servers standing for hosts: an alert
resolved to an inventory host, the playbook's ssh steps run there; a host not in the inventory is
refused and never contacted; label text reaches the remote program literally; a remote step that
outlives its timeout is killed on the host and the run fails over to on_failure and escalation; each
way a host cannot be reached is its own reason; rolling walks an inventory group one host at a time."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from support.app_client import AppClient, Client
from support.flow import SETTLED, alert_body, executions, finished, poll, write_config
from support.sshd import SshHosts, write_key

from demo.processes import free_port, pid_alive
from service.flow.recovery import resumable
from service.rules.loading import load_ruleset
from service.settings import Settings
from service.store import ExecutionRecord

RULES = """
rules:
  - name: on-host
    match: ['alertname="NatsJetStreamUnhealthy"']
    playbook: on-host
    params:
      text: "{{ labels.text | default('plain') }}"
    hosts: "{{ labels.host }}"
    limits: {cooldown: 0, max_runs: 100, window: 1h, concurrency: parallel}
"""

# A remote "runbook script": records its argv and the SSH connection it was run through.
RECORD = """\
import json, os, sys
with open(sys.argv[1], "a") as out:
    out.write(json.dumps({"argv": sys.argv[2:], "ssh": os.environ.get("SSH_CONNECTION", "")}) + "\\n")
"""


def playbook(root: Path, *, sleep: float = 0, timeout: float = 20, retries: int = 0) -> str:
    (root / "record.py").write_text(RECORD)
    return f"""
name: on-host
params:
  text: {{max_length: 4096}}
steps:
  - name: record
    type: ssh
    argv: ["{sys.executable}", "{root}/record.py", "{root}/record.jsonl", "{{{{ params.text }}}}", "{{{{ execution.host }}}}"]
    retries: {retries}
    backoff: 0.05
  - name: slow
    type: ssh
    argv: ["{sys.executable}", "-c", "import os, time; open('{root}/slow.pid', 'w').write(str(os.getpid())); time.sleep({sleep})"]
    timeout: {timeout}
on_failure:
  steps:
    - name: cleanup
      type: ssh
      argv: [touch, "{root}/cleaned-up"]
"""


ROLLING = """
name: on-host
params:
  text: {{max_length: 4096}}
steps:
  - name: restart
    type: rolling
    group: "{{{{ params.text }}}}"
    var: node
    steps:
      - name: act
        type: ssh
        argv: ["{python}", "-c", "import sys, time; s = time.time(); time.sleep(0.2); open(sys.argv[1], 'a').write(f'{{sys.argv[2]}} {{s}} {{time.time()}}\\\\n')", "{root}/acted", "{{{{ node }}}}"]
    check:
      interval: 0.1
      within: 1
      checks:
        - name: healthy
          type: ssh
          argv: [test, -e, "{root}/healthy-{{{{ node }}}}"]
"""


@pytest.fixture(scope="module")
def hosts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshHosts]:
    ssh_hosts = SshHosts(tmp_path_factory.mktemp("sshd"))
    try:
        ssh_hosts.start("h1", "h2")
        yield ssh_hosts
    finally:
        ssh_hosts.stop_all()


async def service(
    app_client: AppClient,
    hosts: SshHosts,
    root: Path,
    playbook_text: str,
    known_hosts: Path | None = None,
    extra_hosts: dict[str, dict[str, object]] | None = None,
) -> Client:
    inventory = hosts.write_inventory(root / "inventory.yaml", groups={"pair": ["h1", "h2"]}, extra_hosts=extra_hosts)
    settings = write_config(root, RULES, {"on-host": playbook_text})
    settings["inventory"] = str(inventory)
    settings["ssh"] = {"known_hosts": str(known_hosts or hosts.known_hosts), "failure_backoff": 30}
    settings["reconcile"] = {"enabled": False}
    settings["web"] = {"enable_reload": True}
    return await app_client(Settings.model_validate(settings))


async def run_for(client: Client, host: str, text: str = "plain") -> dict[str, Any]:
    assert (await client.post("/hooks/alertmanager", json=alert_body(host=host, text=text))).status == 200
    [row] = await poll(lambda: executions(client), what="an execution")
    return await poll(lambda: finished(client, row["id"], (*SETTLED, "refused")), 30, "the run to settle")


async def with_escalation(client: Client, execution_id: str) -> dict[str, Any] | None:
    """The report once its escalation is on the timeline (a refusal is recorded before it is escalated)."""
    report: dict[str, Any] = await (await client.get(f"/api/v1/executions/{execution_id}")).json()
    return report if escalated_reasons(report) else None


def escalated_reasons(report: dict[str, Any]) -> str:
    return " ".join(e["message"] for e in report["timeline"] if e["kind"] == "escalation")


def records(root: Path) -> list[dict[str, Any]]:
    path = root / "record.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


async def test_the_steps_run_on_the_host_the_rule_resolved(
    app_client: AppClient, hosts: SshHosts, tmp_path: Path
) -> None:
    client = await service(app_client, hosts, tmp_path, playbook(tmp_path))
    report = await run_for(client, "h2")
    assert report["execution"]["state"] == "succeeded", [s["output"] for s in report["steps"]]
    [record] = records(tmp_path)
    assert record["argv"] == ["plain", "h2"]
    assert record["ssh"].split()[-1] == str(hosts.servers["h2"].port), "run through h2's sshd"
    step = next(s for s in report["steps"] if s["name"] == "record")
    assert step["data"]["host"]["name"] == "h2" and "on h2 (" in step["summary"]


async def test_hostile_label_text_reaches_the_host_as_literal_argv(
    app_client: AppClient, hosts: SshHosts, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    hostile = f"$(touch {marker}) `touch {marker}`; touch {marker}\n'\"--flag && touch {marker} | >{marker}"
    client = await service(app_client, hosts, tmp_path, playbook(tmp_path))
    report = await run_for(client, "h1", text=hostile)
    assert report["execution"]["state"] == "succeeded", [s["output"] for s in report["steps"]]
    [record] = records(tmp_path)
    assert record["argv"] == [hostile, "h1"]
    assert not marker.exists()


async def test_a_host_not_in_the_inventory_is_refused_and_never_contacted(
    app_client: AppClient, hosts: SshHosts, tmp_path: Path
) -> None:
    before = {name: server.connections() for name, server in hosts.servers.items()}
    client = await service(app_client, hosts, tmp_path, playbook(tmp_path))
    report = await run_for(client, "127.0.0.1")
    report = await poll(lambda: with_escalation(client, report["execution"]["id"]), what="the escalation")
    execution = report["execution"]
    assert execution["state"] == "refused" and execution["refusal"] == "unknown_host", execution
    assert 'host "127.0.0.1" not in the inventory (inventory.yaml)' in execution["reason"]
    assert "not in the inventory" in escalated_reasons(report)
    assert report["steps"] == [] and records(tmp_path) == []
    assert {name: server.connections() for name, server in hosts.servers.items()} == before


async def test_a_remote_step_past_its_timeout_is_killed_there_and_the_run_fails_over(
    app_client: AppClient, hosts: SshHosts, tmp_path: Path
) -> None:
    client = await service(app_client, hosts, tmp_path, playbook(tmp_path, sleep=60, timeout=1))
    report = await run_for(client, "h1")
    assert report["execution"]["state"] == "escalated", report
    slow = next(s for s in report["steps"] if s["name"] == "slow")
    assert slow["status"] == "timeout" and "process group killed" in slow["summary"], slow
    assert not pid_alive(int((tmp_path / "slow.pid").read_text())), "the remote process outlived its step"
    assert (tmp_path / "cleaned-up").exists(), "on_failure ran on the host"
    assert 'step "slow" timeout' in escalated_reasons(report)


@pytest.mark.parametrize("kind", ["host_key_changed", "host_key_unknown", "auth_refused", "unreachable"])
async def test_each_way_a_host_cannot_be_reached_is_its_own_reason_without_a_retry_storm(
    kind: str, app_client: AppClient, hosts: SshHosts, tmp_path: Path
) -> None:
    server = hosts.servers["h1"]
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(hosts.known_hosts.read_text())
    host_vars = hosts.host_vars("h1")
    if kind == "host_key_changed":  # known_hosts holds another key for the host
        other = write_key(tmp_path / "other").export_public_key().decode().strip()
        known_hosts.write_text(f"[127.0.0.1]:{server.port} {other}\n")
    elif kind == "host_key_unknown":
        known_hosts.write_text("")
    elif kind == "auth_refused":
        write_key(tmp_path / "stranger")
        host_vars["ansible_ssh_private_key_file"] = str(tmp_path / "stranger")
    else:
        host_vars["ansible_port"] = free_port()
    before = server.connections()
    client = await service(
        app_client, hosts, tmp_path, playbook(tmp_path, retries=3), known_hosts, extra_hosts={"target": host_vars}
    )
    report = await run_for(client, "target")
    assert report["execution"]["state"] == "escalated", report
    attempts = [s for s in report["steps"] if s["name"] == "record"]
    assert len(attempts) == 4 and {s["data"]["ssh_error"] for s in attempts} == {kind}
    wording = {
        "host_key_changed": "host key CHANGED",
        "host_key_unknown": "host key unknown",
        "auth_refused": "login refused for user",
        "unreachable": "unreachable: Connection refused",
    }[kind]
    assert wording in attempts[0]["summary"] and wording in escalated_reasons(report)
    assert all("not tried again for another" in s["summary"] for s in attempts[1:]), "retried the connection"
    expected = 0 if kind == "unreachable" else 1
    assert server.connections() - before == expected, server.log()
    assert records(tmp_path) == []


async def test_rolling_over_an_inventory_group_one_host_at_a_time(
    app_client: AppClient, hosts: SshHosts, tmp_path: Path
) -> None:
    (tmp_path / "healthy-h1").touch()
    (tmp_path / "healthy-h2").touch()
    client = await service(app_client, hosts, tmp_path, ROLLING.format(python=sys.executable, root=tmp_path))
    report = await run_for(client, "h1", text="pair")
    assert report["execution"]["state"] == "succeeded", [s["output"] for s in report["steps"]]
    acted = [line.split() for line in (tmp_path / "acted").read_text().splitlines()]
    assert [a[0] for a in acted] == ["h1", "h2"]
    assert float(acted[1][1]) >= float(acted[0][2]), "the second host started before the first was done"
    ran_on = [(s["phase"], s["data"]["host"]["name"]) for s in report["steps"] if s["type"] == "ssh" and s["ok"]]
    assert ran_on == [("steps/restart[h1]", "h1"), ("steps/restart[h2]", "h2")]


async def test_rolling_stops_at_the_first_host_that_fails_verification(
    app_client: AppClient, hosts: SshHosts, tmp_path: Path
) -> None:
    (tmp_path / "healthy-h2").touch()  # h1 never becomes healthy
    client = await service(app_client, hosts, tmp_path, ROLLING.format(python=sys.executable, root=tmp_path))
    report = await run_for(client, "h1", text="pair")
    assert report["execution"]["state"] == "escalated", report
    acted = [line.split()[0] for line in (tmp_path / "acted").read_text().splitlines()]
    assert acted == ["h1"], "went on past the host that failed"
    rolling = next(s for s in report["steps"] if s["name"] == "restart")
    assert rolling["data"] == {"done": [], "failed": "h1"}


async def test_the_inventory_is_reloaded_with_the_rules(app_client: AppClient, hosts: SshHosts, tmp_path: Path) -> None:
    settings_client = await service(app_client, hosts, tmp_path, playbook(tmp_path))
    body = alert_body(host="h3")

    async def simulate() -> dict[str, Any]:
        response = await settings_client.post("/api/v1/simulate", json=body)
        assert response.status == 200
        return (await response.json())["alerts"][0]["decisions"][0]  # type: ignore[no-any-return]

    assert (await simulate())["error"].startswith('host "h3" not in the inventory')
    inventory = tmp_path / "inventory.yaml"
    doc = yaml.safe_load(inventory.read_text())
    doc["all"]["hosts"]["h3"] = hosts.host_vars("h2")
    inventory.write_text(yaml.safe_dump(doc))
    assert (await settings_client.post("/-/reload")).status == 200
    decision = await simulate()
    assert decision["error"] is None
    assert decision["hosts"] == [
        {"name": "h3", "address": "127.0.0.1", "port": hosts.servers["h2"].port, "user": hosts.user}
    ]
    record = next(p for p in decision["steps"] if p["step"] == "record")
    assert record["runs"] == "remote" and record["hosts"] == decision["hosts"]

    doc["all"]["hosts"]["h4"] = {"ansible_password": "inline"}
    inventory.write_text(yaml.safe_dump(doc))
    refused = await settings_client.post("/-/reload")
    assert refused.status == 400
    assert any("ansible_password: secrets are not read" in e for e in (await refused.json())["errors"])
    assert (await simulate())["error"] is None, "a bad inventory keeps the old one"


def test_a_resumed_run_resolves_its_hosts_again(hosts: SshHosts, tmp_path: Path) -> None:
    """After a restart a run is resumed only on hosts the inventory still has; else it is interrupted."""
    inventory = hosts.write_inventory(tmp_path / "inventory.yaml")
    write_config(tmp_path, RULES, {"on-host": playbook(tmp_path)})
    ruleset = load_ruleset(["rules/*.yaml"], ["playbooks/*.yaml"], tmp_path, inventory)

    def record(host: str) -> ExecutionRecord:
        execution = {
            "id": "ex-1",
            "rule": "on-host",
            "playbook": "on-host",
            "playbook_version": ruleset.playbooks["on-host"].version,
            "params": {"text": "plain"},
            "target": "t",
            "fingerprint": "f",
            "started_at": None,
            "state": "queued",
        }
        occurrence = {"id": 1, "labels": {"host": host}, "annotations": {}, "generator_url": ""}
        return ExecutionRecord(execution, [], [], occurrence)

    request = resumable(record("h2"), ruleset)
    assert request is not None and [h.name for h in request.hosts] == ["h2"]
    assert request.inventory is ruleset.inventory
    assert resumable(record("gone"), ruleset) is None
