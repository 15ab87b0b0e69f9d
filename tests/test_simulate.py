"""POST /api/v1/simulate in process: the decisions for a webhook body, and nothing stored or run."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from service.app import RUNTIME, create_app
from service.settings import Secrets, Settings

FIXTURES = Path(__file__).resolve().parent / "fixtures"
FIRING = (FIXTURES / "alertmanager" / "firing-nats-jetstream-unhealthy.json").read_bytes()
JSON = {"Content-Type": "application/json"}


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[TestClient[Any, Any]]:
    settings = Settings.model_validate(
        {
            "store": {"path": str(tmp_path / "store.db")},
            "rules": [str(FIXTURES / "rules" / "*.yaml")],
            "playbooks": [str(FIXTURES / "playbooks" / "*.yaml")],
        }
    )
    test_client = TestClient(TestServer(create_app(settings, Secrets(None, None, None))))
    await test_client.start_server()
    yield test_client
    await test_client.close()


async def assert_nothing_stored_or_run(client: TestClient[Any, Any]) -> None:
    listing = await client.get("/api/v1/executions")
    assert listing.status == 200
    assert (await listing.json())["executions"] == []
    with sqlite3.connect(client.app[RUNTIME].store.path) as conn:
        counts = [conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in ("notifications", "executions")]
    assert counts == [0, 0]


async def test_simulate_the_captured_notification(client: TestClient[Any, Any]) -> None:
    response = await client.post("/api/v1/simulate", data=FIRING, headers=JSON)
    assert response.status == 200
    (alert,) = (await response.json())["alerts"]
    assert alert["fingerprint"] == "16ff7ec28276970a"
    assert [(d["rule"], d["playbook"], d["target"]) for d in alert["decisions"]] == [
        ("nats-jetstream-unhealthy", "nats-restart", "127.0.0.1:19101")
    ]
    verdicts = {r["rule"]: r["verdict"] for r in alert["rules"]}
    assert verdicts == {
        "nats-jetstream-unhealthy": "matched",
        "nats-down": "not_matched",
        "jetstream-backlog": "not_matched",
        "jetstream-backlog-note": "disabled",
        "circuit-open": "not_matched",
        "router-nats-flapping": "not_matched",
    }
    down = next(r for r in alert["rules"] if r["rule"] == "nats-down")
    assert down["reasons"] == ['label alertname="NatsJetStreamUnhealthy" does not match ="NatsDown"']
    assert alert["rules"][0]["would_run"]["params"] == {
        "instance": "127.0.0.1:19101",
        "scripts_dir": "/opt/beamline/scripts",
    }
    await assert_nothing_stored_or_run(client)


async def test_simulate_a_list_of_alerts(client: TestClient[Any, Any]) -> None:
    alerts = [{"labels": {"alertname": "JetStreamConsumerBacklog", "stream": "DECIDE"}}]
    response = await client.post("/api/v1/simulate", data=json.dumps(alerts), headers=JSON)
    assert response.status == 200
    (alert,) = (await response.json())["alerts"]
    assert [(d["rule"], d["mode"]) for d in alert["decisions"]] == [("jetstream-backlog", "shadow")]
    await assert_nothing_stored_or_run(client)


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"{not json", "Expecting property name enclosed in double quotes"),
        (b'{"alerts": []}', "alerts: List should have at least 1 item"),
        (b'{"alerts": [{"annotations": {}}]}', "alerts.0.labels: Field required"),
        (b"\xff", "codec can't decode"),
    ],
)
async def test_bad_input_is_400(client: TestClient[Any, Any], body: bytes, error: str) -> None:
    response = await client.post("/api/v1/simulate", data=body, headers=JSON)
    assert response.status == 400
    answer = await response.json()
    assert answer["status"] == "error"
    assert error in answer["error"]
    await assert_nothing_stored_or_run(client)
