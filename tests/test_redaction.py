"""Secrets never appear in stored outputs, data or reports."""

from __future__ import annotations

import sys
from pathlib import Path

from aiohttp.test_utils import TestClient, TestServer
from flow_helpers import alert_body, poll, write_config

from service.app import create_app
from service.redaction import MASK, Redactor
from service.settings import Secrets, Settings


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
    assert redactor.data({"k": ["op-secret-token", 3, {"op-secret-token": "x"}]}) == {
        "k": [MASK, 3, {MASK: "x"}]
    }


async def test_step_output_is_stored_redacted(tmp_path: Path) -> None:
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
    client = TestClient(
        TestServer(create_app(Settings.model_validate(config), Secrets(None, None, "op-secret-token")))
    )
    await client.start_server()
    try:
        assert (await client.post("/hooks/alertmanager", json=alert_body())).status == 200

        async def done() -> dict[str, object] | None:
            rows = (await (await client.get("/api/v1/executions")).json())["executions"]
            if not rows or rows[0]["state"] not in ("succeeded", "failed", "escalated"):
                return None
            report: dict[str, object] = await (await client.get(f"/api/v1/executions/{rows[0]['id']}")).json()
            return report

        report = await poll(done)
        output = report["steps"][0]["output"]  # type: ignore[index]
        assert "op-secret-token" not in output and "swordfish" not in output and "ZZ-1234" not in output
        assert output.count(MASK) == 3
    finally:
        await client.close()
