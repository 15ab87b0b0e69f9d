"""Secrets never appear in stored outputs, data or reports."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from support.app_client import AppClient
from support.flow import alert_body, newest_finished, poll, write_config

from service.redaction import MASK, Redactor
from service.settings import Secrets, Settings, load_secrets


def test_secret_values_and_default_patterns_are_masked() -> None:
    redactor = Redactor(["op-secret-token", "ab"])
    text = (
        "token op-secret-token; Authorization: Bearer xyz123\n"
        "password=hunter2 api_key: k-99 url http://user:pa55@host/x ab stays"
    )
    masked = redactor.text(text)
    for secret in ("op-secret-token", "xyz123", "hunter2", "k-99", "pa55"):
        assert secret not in masked
    assert "Authorization: Bearer " + MASK in masked
    assert "password=" + MASK in masked
    assert "http://user:" + MASK + "@host/x" in masked
    assert masked.endswith("ab stays")  # too short to be a secret: left alone
    assert redactor.data({"k": ["op-secret-token", 3, {"op-secret-token": "x"}]}) == {"k": [MASK, 3, {MASK: "x"}]}


async def test_step_output_is_stored_redacted(tmp_path: Path, app_client: AppClient) -> None:
    playbook = f"""
name: leaky
steps:
  - name: leak
    type: exec
    argv: ["{sys.executable}", "-c", "print('token is op-secret-token'); print('db password=swordfish'); print('custom ZZ-1234')"]
"""
    rules = """
rules:
  - name: leaky
    match: ['alertname="NatsJetStreamUnhealthy"']
    playbook: leaky
"""
    config = write_config(tmp_path, rules, {"leaky": playbook})
    config["redact_patterns"] = [r"ZZ-\d+"]
    client = await app_client(Settings.model_validate(config), Secrets(None, None, "op-secret-token"))
    assert (await client.post("/hooks/alertmanager", json=alert_body())).status == 200

    report = await poll(lambda: newest_finished(client))
    output = report["steps"][0]["output"]  # type: ignore[index]
    assert "op-secret-token" not in output and "swordfish" not in output and "ZZ-1234" not in output
    assert output.count(MASK) == 3


async def test_steps_inherit_only_an_allowlist_and_the_services_secrets_are_masked_even_when_inherited(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, app_client: AppClient
) -> None:
    (tmp_path / "operator.token").write_text("op-token-from-a-file\n")
    monkeypatch.setenv("REMEDIATOR_WEBHOOK_BEARER_TOKEN", "hook-token-from-env")
    monkeypatch.setenv("CLOUD_ACCESS_KEY", "cloud-key-1234")  # the service's own environment, not a setting
    monkeypatch.setenv("COPIED_OPERATOR_TOKEN", "op-token-from-a-file")  # a secret value under another name
    monkeypatch.setenv("HOME", str(tmp_path))
    dump = "import json, os; print(json.dumps(dict(os.environ), sort_keys=True))"
    read_token = f"print(open({str(tmp_path / 'operator.token')!r}).read())"
    playbook = f"""
name: envdump
steps:
  - {{name: default, type: exec, argv: ["{sys.executable}", "-c", "{dump}"]}}
  - {{name: everything, type: exec, inherit_env: true, argv: ["{sys.executable}", "-c", "{dump}"]}}
  - {{name: listed, type: exec, inherit_env: [CLOUD_*], argv: ["{sys.executable}", "-c", "{dump}"]}}
  - {{name: token_file, type: exec, argv: ["{sys.executable}", "-c", "{read_token}"]}}
"""
    rules = """
rules:
  - name: envdump
    match: ['alertname="NatsJetStreamUnhealthy"']
    playbook: envdump
"""
    config = write_config(tmp_path, rules, {"envdump": playbook})
    config["operator"] = {"token_file": "operator.token"}
    settings = Settings.model_validate(config)
    secrets = load_secrets(settings)
    assert secrets.operator_token == "op-token-from-a-file"
    client = await app_client(settings, secrets)
    body = alert_body()
    hook = await client.post("/hooks/alertmanager", json=body, headers={"Authorization": "Bearer hook-token-from-env"})
    assert hook.status == 200

    report = await poll(lambda: newest_finished(client))
    outputs = {s["name"]: s["output"] for s in report["steps"]}
    default, everything, listed = (json.loads(outputs[n]) for n in ("default", "everything", "listed"))
    assert default["HOME"] == str(tmp_path)
    assert "CLOUD_ACCESS_KEY" not in default and "COPIED_OPERATOR_TOKEN" not in default
    assert listed["CLOUD_ACCESS_KEY"] == "cloud-key-1234" and "COPIED_OPERATOR_TOKEN" not in listed
    assert everything["CLOUD_ACCESS_KEY"] == "cloud-key-1234"  # asked for: the operator's choice
    assert everything["COPIED_OPERATOR_TOKEN"] == MASK  # a secret of the service's: masked even so
    assert not any(k.startswith("REMEDIATOR_") and k != "REMEDIATOR_EXECUTION_ID" for k in everything)
    assert outputs["token_file"] == MASK + "\n\n"
    assert "op-token-from-a-file" not in json.dumps(report) and "hook-token-from-env" not in json.dumps(report)


async def test_a_failure_reason_quoting_a_step_is_redacted_on_the_run_and_its_escalation(
    tmp_path: Path, app_client: AppClient
) -> None:
    """The run's reason, its timeline and the escalation quote the failed step's summary (here an
    error naming the program, whose path holds a secret): they are published as the output is."""
    playbook = """
name: leaky
steps:
  - name: warn
    type: escalate
    reason: "about to use op-secret-token"
  - name: start
    type: exec
    argv: ["/nonexistent/op-secret-token"]
"""
    rules = """
rules:
  - name: leaky
    match: ['alertname="NatsJetStreamUnhealthy"']
    playbook: leaky
"""
    config = write_config(tmp_path, rules, {"leaky": playbook})
    client = await app_client(Settings.model_validate(config), Secrets(None, None, "op-secret-token"))
    assert (await client.post("/hooks/alertmanager", json=alert_body())).status == 200

    report = await poll(lambda: newest_finished(client, ("failed", "escalated")))
    assert report["execution"]["state"] == "escalated"
    text = json.dumps(report)
    assert "could not start" in text and "about to use" in text
    assert "op-secret-token" not in text
