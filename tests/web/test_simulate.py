"""POST /api/v1/simulate in process: the decisions for a webhook body, and nothing stored or run."""

from __future__ import annotations

import asyncio
import gc
import json
import sqlite3
import time
from pathlib import Path

import pytest
from support.app_client import AppClient, Client

from service.settings import Secrets, Settings
from service.web.api import MAX_SIMULATE_ALERTS
from service.web.runtime import RUNTIME

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
FIRING = (FIXTURES / "alertmanager" / "firing-nats-jetstream-unhealthy.json").read_bytes()
JSON = {"Content-Type": "application/json"}


def fixture_settings(tmp_path: Path) -> Settings:
    return Settings.model_validate(
        {
            "store": {"path": str(tmp_path / "store.db")},
            "rules": [str(FIXTURES / "rules" / "*.yaml")],
            "playbooks": [str(FIXTURES / "playbooks" / "*.yaml")],
        }
    )


@pytest.fixture
async def client(tmp_path: Path, app_client: AppClient) -> Client:
    return await app_client(fixture_settings(tmp_path))


async def assert_nothing_stored_or_run(client: Client) -> None:
    listing = await client.get("/api/v1/executions")
    assert listing.status == 200
    assert (await listing.json())["executions"] == []
    with sqlite3.connect(client.app[RUNTIME].store.path) as conn:
        counts = [conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in ("notifications", "executions")]
    assert counts == [0, 0]


async def test_simulate_the_captured_notification(client: Client) -> None:
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
    assert alert["admission"] == [
        {"rule": "nats-jetstream-unhealthy", "decision": "run", "reason": "admitted", "detail": "admitted"}
    ]
    await assert_nothing_stored_or_run(client)


async def test_simulate_says_whether_admission_would_let_the_run_start_now(client: Client) -> None:
    runtime = client.app[RUNTIME]
    store, now = runtime.store, runtime.clock.now()
    pause = await store.add_pause("nats-jetstream-unhealthy", "*", "change window", "alice", now, None)

    async def admission() -> list[dict[str, str]]:
        response = await client.post("/api/v1/simulate", data=FIRING, headers=JSON)
        assert response.status == 200
        admitted: list[dict[str, str]] = (await response.json())["alerts"][0]["admission"]
        return admitted

    [paused] = await admission()
    assert (paused["decision"], paused["reason"]) == ("refuse", "paused")
    assert "by alice: change window" in paused["detail"]
    await store.clear_pause(pause, now)
    assert [(a["decision"], a["reason"]) for a in await admission()] == [("run", "admitted")]
    with sqlite3.connect(store.path) as conn:  # nothing but the pause was written: simulate only reads
        assert conn.execute("SELECT count(*) FROM executions").fetchone() == (0,)


def many_alerts(count: int) -> bytes:
    body = json.loads(FIRING)
    alert = body["alerts"][0]
    body["alerts"] = [
        {**alert, "fingerprint": f"{n:016x}", "labels": {**alert["labels"], "n": str(n)}} for n in range(count)
    ]
    return json.dumps(body).encode()


async def test_simulate_takes_a_webhook_body_only(client: Client) -> None:
    # The same model as intake: a bare list of alerts is not what Alertmanager sends.
    alerts = [{"labels": {"alertname": "JetStreamConsumerBacklog", "stream": "DECIDE"}}]
    response = await client.post("/api/v1/simulate", data=json.dumps(alerts), headers=JSON)
    assert response.status == 400
    assert (await response.json())["details"][0]["field"] == "(body)"


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        (b"{not json", "(body)", "invalid JSON"),
        (b"\xff", "(body)", "invalid JSON"),
        (b"[" * 100_000, "(body)", "invalid JSON: recursion limit exceeded"),
        (FIRING.replace(b'"alerts":[', b'"alerts":[' + b"[" * 5000 + b"]" * 5000 + b","), "(body)", "recursion"),
        (FIRING.replace(b'"version":"4"', b'"version":"3"'), "version", "unsupported webhook version"),
        (FIRING.replace(b'"fingerprint":"16ff7ec28276970a"', b'"fingerprint":7'), "alerts[0].fingerprint", ""),
    ],
)
async def test_bad_input_is_400_naming_the_field(client: Client, body: bytes, field: str, message: str) -> None:
    response = await client.post("/api/v1/simulate", data=body, headers=JSON)
    assert response.status == 400
    answer = await response.json()
    assert answer["status"] == "error"
    assert answer["details"][0]["field"] == field
    assert message in answer["details"][0]["message"]
    await assert_nothing_stored_or_run(client)


async def test_too_many_alerts_or_bytes_is_413(client: Client) -> None:
    response = await client.post("/api/v1/simulate", data=many_alerts(MAX_SIMULATE_ALERTS + 1), headers=JSON)
    assert response.status == 413
    assert f"at most {MAX_SIMULATE_ALERTS}" in (await response.json())["error"]
    huge = FIRING.replace(b'"receiver":"', b'"receiver":"' + b"x" * (1024 * 1024))
    response = await client.post("/api/v1/simulate", data=huge, headers=JSON)
    assert response.status == 413
    await assert_nothing_stored_or_run(client)


@pytest.mark.parametrize(
    ("headers", "body"),
    [
        ({"Content-Type": "text/plain"}, FIRING),
        ({"Content-Type": "application/json; charset=utf-16"}, FIRING.decode().encode("utf-16")),
    ],
)
async def test_not_utf8_json_is_415(client: Client, headers: dict[str, str], body: bytes) -> None:
    response = await client.post("/api/v1/simulate", data=body, headers=headers)
    assert response.status == 415


async def test_garbage_declared_gzip_is_400(client: Client) -> None:
    response = await client.post(
        "/api/v1/simulate", data=b"not gzip at all", headers={**JSON, "Content-Encoding": "gzip"}
    )
    assert response.status == 400
    assert "cannot be read" in (await response.json())["error"]


async def test_the_loop_answers_while_a_big_simulation_runs(client: Client) -> None:
    gc.collect()
    gc.freeze()  # as `remediator serve` does with its start-up heap: here that heap is pytest's too
    body = many_alerts(MAX_SIMULATE_ALERTS)
    began = time.perf_counter()
    simulation = asyncio.create_task(client.post("/api/v1/simulate", data=body, headers=JSON))
    waits = []
    while not simulation.done():
        started = time.perf_counter()
        healthy = await client.get("/-/healthy")
        assert healthy.status == 200
        waits.append(time.perf_counter() - started)
    response = await simulation
    took = time.perf_counter() - began
    assert response.status == 200
    assert len((await response.json())["alerts"]) == MAX_SIMULATE_ALERTS
    # Were the work on the loop, one health check would wait for all of it (~0.5 s here); the bound
    # leaves room for a loaded machine without letting that through.
    assert max(waits) < max(0.2, took / 4), f"/-/healthy waited {max(waits):.3f} s of a {took:.3f} s simulation"


@pytest.fixture
async def guarded(tmp_path: Path, app_client: AppClient) -> Client:
    return await app_client(fixture_settings(tmp_path), Secrets(None, None, "op-token", read_token="rd-token"))


async def test_a_read_token_guards_simulate(guarded: Client) -> None:
    refused = await guarded.post("/api/v1/simulate", data=FIRING, headers=JSON)
    assert refused.status == 401
    assert "Bearer" in refused.headers["WWW-Authenticate"]
    for token in ("rd-token", "op-token"):
        response = await guarded.post(
            "/api/v1/simulate", data=FIRING, headers={**JSON, "Authorization": f"Bearer {token}"}
        )
        assert response.status == 200, token


async def test_credentials_are_checked_before_the_body_is_read(guarded: Client) -> None:
    # Headers promising a megabyte that never comes: the answer must not wait for it.
    reader, writer = await asyncio.open_connection(guarded.host, guarded.port)
    writer.write(
        b"POST /api/v1/simulate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000000\r\n\r\n{"
    )
    await writer.drain()
    status_line = await asyncio.wait_for(reader.readline(), timeout=5)
    writer.close()
    assert status_line.startswith(b"HTTP/1.1 401")
