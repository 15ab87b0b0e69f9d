"""The webhook receiver, in process: every fixture, every bad-input class, auth on and off."""

from __future__ import annotations

import base64
import json
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from support.app_client import AppClient, Client
from support.flow import write_resends

from service.settings import Secrets, Settings
from service.web.runtime import RUNTIME

FIXTURES = Path(__file__).parent.parent / "fixtures" / "alertmanager"
FIRING = (FIXTURES / "firing-nats-jetstream-unhealthy.json").read_bytes()
RESOLVED = (FIXTURES / "resolved-nats-jetstream-unhealthy.json").read_bytes()
CAPTURED_HEADERS = json.loads((FIXTURES / "request-headers.json").read_text())
JSON = {"Content-Type": "application/json"}

ClientFactory = Callable[..., Awaitable[Client]]


@pytest.fixture
def make_client(tmp_path: Path, app_client: AppClient) -> ClientFactory:
    made = 0

    async def make(secrets: Secrets | None = None, basic_username: str | None = None, **settings: Any) -> Client:
        nonlocal made
        config = Settings.model_validate(
            {
                "store": {"path": str(tmp_path / f"store{made}.db")},
                "rules": [],
                "playbooks": [],
                "webhook_auth": {"basic_username": basic_username},
                **settings,
            }
        )
        made += 1
        return await app_client(config, secrets)

    return make


def stored_counts(client: Client) -> tuple[int, int, int]:
    path = client.app[RUNTIME].store.path
    with sqlite3.connect(path) as conn:
        return tuple(  # type: ignore[return-value]
            conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
            for table in ("notifications", "occurrences", "alert_events")
        )


async def test_captured_firing_then_resolved_are_stored_as_one_occurrence(make_client: ClientFactory) -> None:
    client = await make_client()
    first = await client.post("/hooks/alertmanager", data=FIRING, headers=JSON)
    assert first.status == 200
    assert (await first.json())["alerts"] == 1
    resolved = await client.post("/hooks/alertmanager", data=RESOLVED, headers=JSON)
    assert resolved.status == 200
    assert stored_counts(client) == (2, 1, 2)
    with sqlite3.connect(client.app[RUNTIME].store.path) as conn:
        status, ends_at, count = conn.execute("SELECT status, ends_at, receive_count FROM occurrences").fetchone()
        events = conn.execute("SELECT status, previous_status FROM alert_events ORDER BY id").fetchall()
    assert (status, count) == ("resolved", 2)
    assert ends_at.startswith("2026-11-27T19:54:18.25")
    # the firing one had the zero endsAt: stored as "still firing", then the transition is recorded
    assert events == [("firing", None), ("resolved", "firing")]


async def test_repeat_of_the_same_notification_is_the_same_occurrence(make_client: ClientFactory) -> None:
    client = await make_client()
    answers = []
    for _ in range(3):
        answer = await client.post("/hooks/alertmanager", data=FIRING, headers=JSON)
        assert answer.status == 200
        answers.append((await answer.json())["notification_id"])
    # the re-sends are acknowledged from memory: the occurrence was committed by the first
    assert answers == [1, None, None]
    assert stored_counts(client) == (1, 1, 1)
    await write_resends(client)
    # both deliveries in one write: the latest notification and one event, the count of both
    assert stored_counts(client) == (2, 1, 2)
    with sqlite3.connect(client.app[RUNTIME].store.path) as conn:
        assert conn.execute("SELECT receive_count FROM occurrences").fetchone() == (3,)
    metrics = await (await client.get("/metrics")).text()
    assert "remediator_webhook_remembered_notifications_total 2.0" in metrics


async def test_captured_request_with_its_real_headers_and_bearer_token(make_client: ClientFactory) -> None:
    client = await make_client(secrets=Secrets("lab-secret-token", None, None))
    headers = {k: v for k, v in CAPTURED_HEADERS.items() if k not in ("Host", "Content-Length")}
    response = await client.post("/hooks/alertmanager", data=FIRING, headers=headers)
    assert response.status == 200


async def test_unknown_fields_from_newer_alertmanager_are_accepted_and_kept(make_client: ClientFactory) -> None:
    client = await make_client()
    body = json.loads(FIRING)
    body["notification_reason"] = "repeat"
    body["routeLabels"] = {"team": "router"}
    body["alerts"][0]["someFutureField"] = {"x": 1}
    response = await client.post("/hooks/alertmanager", data=json.dumps(body), headers=JSON)
    assert response.status == 200
    with sqlite3.connect(client.app[RUNTIME].store.path) as conn:
        stored = json.loads(conn.execute("SELECT body FROM notifications").fetchone()[0])
    assert stored["notification_reason"] == "repeat"
    assert stored["routeLabels"] == {"team": "router"}
    assert stored["alerts"][0]["someFutureField"] == {"x": 1}


async def test_the_zero_end_time_in_any_spelling_means_still_firing(make_client: ClientFactory) -> None:
    client = await make_client()
    for n, zero in enumerate(("0001-01-01T00:00:00Z", "0001-01-01T00:00:00.000+00:00", "0001-01-01T00:00:00-00:00")):
        body = json.loads(FIRING)
        body["alerts"][0].update(fingerprint=f"zero{n}", endsAt=zero)
        assert (await client.post("/hooks/alertmanager", data=json.dumps(body), headers=JSON)).status == 200
    body = json.loads(FIRING)
    body["alerts"][0].update(fingerprint="ended", status="resolved", endsAt="2026-11-27T20:00:00+01:00")
    assert (await client.post("/hooks/alertmanager", data=json.dumps(body), headers=JSON)).status == 200
    with sqlite3.connect(client.app[RUNTIME].store.path) as conn:
        ends = dict(conn.execute("SELECT fingerprint, ends_at FROM occurrences").fetchall())
    assert ends == {"zero0": None, "zero1": None, "zero2": None, "ended": "2026-11-27T19:00:00.000000+00:00"}


def _mutated(change: Callable[[dict[str, Any]], None]) -> bytes:
    body = json.loads(FIRING)
    change(body)
    return json.dumps(body).encode()


def _bad_alert_field(name: str, value: Any, message: str, case: str) -> Any:
    """The captured payload with its alert's `name` set to `value`: a 400 naming alerts[0].<name>."""
    return pytest.param(_mutated(lambda b: b["alerts"][0].update({name: value})), f"alerts[0].{name}", message, id=case)


BAD_BODIES = [
    pytest.param(b"{not json", "(body)", "invalid JSON", id="bad-json"),
    pytest.param(b"", "(body)", "invalid JSON", id="empty"),
    pytest.param(b"\xff\xfe", "(body)", "invalid JSON", id="not-utf8"),
    pytest.param(b"[1, 2]", "(body)", "object", id="not-an-object"),
    pytest.param(_mutated(lambda b: b.update(version="3")), "version", 'only version "4"', id="unknown-version"),
    pytest.param(_mutated(lambda b: b.update(version=4)), "version", 'only version "4"', id="version-as-number"),
    pytest.param(_mutated(lambda b: b.pop("groupKey")), "groupKey", "Field required", id="missing-groupKey"),
    pytest.param(_mutated(lambda b: b.update(alerts=[])), "alerts", "at least 1", id="no-alerts"),
    _bad_alert_field("labels", ["a"], "object", "labels-list"),
    pytest.param(
        _mutated(lambda b: b["alerts"][0]["labels"].update(severity=3)),
        "alerts[0].labels.severity",
        "string",
        id="label-value-number",
    ),
    _bad_alert_field("startsAt", "yesterday", "datetime", "bad-startsAt"),
    _bad_alert_field("startsAt", "2026-11-27T19:53:15", "timezone", "startsAt-without-zone"),
    # In UTC these lie outside what a datetime holds: converting them used to overflow (a 500).
    _bad_alert_field(
        "startsAt",
        "0001-01-01T00:00:00+01:00",
        "greater than or equal to 0001-01-01T00:00:00Z",
        "startsAt-before-year-1-in-utc",
    ),
    _bad_alert_field(
        "endsAt", "9999-12-31T23:59:59-01:00", "less than 9999-12-31T00:00:00Z", "endsAt-past-year-9999-in-utc"
    ),
    _bad_alert_field("status", "pending", "'firing'", "bad-status"),
    pytest.param(
        _mutated(lambda b: b["alerts"][0].pop("fingerprint")),
        "alerts[0].fingerprint",
        "Field required",
        id="missing-fingerprint",
    ),
    pytest.param(_mutated(lambda b: b.update(truncatedAlerts=-1)), "truncatedAlerts", "greater than", id="negative"),
    pytest.param(b'{"a": "\\ud800"}', "(body)", "invalid JSON", id="lone-surrogate"),
    pytest.param(b"[" * 5000, "(body)", "invalid JSON", id="too-deep"),
]


@pytest.mark.parametrize(("body", "field", "message"), BAD_BODIES)
async def test_bad_bodies_get_400_naming_the_field_and_store_nothing(
    make_client: ClientFactory, body: bytes, field: str, message: str
) -> None:
    client = await make_client()
    response = await client.post("/hooks/alertmanager", data=body, headers=JSON)
    assert response.status == 400
    answer = await response.json()
    assert any(d["field"] == field and message in d["message"] for d in answer["details"]), answer
    assert field in answer["error"] or field == "(body)"
    assert stored_counts(client) == (0, 0, 0)


async def test_non_json_content_type_is_415(make_client: ClientFactory) -> None:
    client = await make_client()
    for content_type in ("text/plain", "application/x-www-form-urlencoded"):
        response = await client.post("/hooks/alertmanager", data=FIRING, headers={"Content-Type": content_type})
        assert response.status == 415
        assert content_type in (await response.json())["error"]
    assert stored_counts(client) == (0, 0, 0)


async def test_json_with_charset_is_accepted(make_client: ClientFactory) -> None:
    client = await make_client()
    response = await client.post(
        "/hooks/alertmanager", data=FIRING, headers={"Content-Type": "application/json; charset=utf-8"}
    )
    assert response.status == 200


async def test_body_over_the_limit_is_413_with_and_without_content_length(make_client: ClientFactory) -> None:
    client = await make_client(limits={"max_body_bytes": 2048})
    padded = _mutated(lambda b: b["alerts"][0]["annotations"].update(pad="x" * 4096))
    response = await client.post("/hooks/alertmanager", data=padded, headers=JSON)
    assert response.status == 413
    assert "2048" in (await response.json())["error"]

    async def chunked() -> AsyncIterator[bytes]:
        for start in range(0, len(padded), 512):
            yield padded[start : start + 512]

    response = await client.post("/hooks/alertmanager", data=chunked(), headers=JSON)
    assert response.status == 413
    # just under the limit still works
    assert (await client.post("/hooks/alertmanager", data=FIRING, headers=JSON)).status == 200
    assert stored_counts(client) == (1, 1, 1)


async def test_default_limit_is_one_mebibyte(make_client: ClientFactory) -> None:
    client = await make_client()
    big = _mutated(lambda b: b["alerts"][0]["annotations"].update(pad="x" * (1024 * 1024)))
    assert (await client.post("/hooks/alertmanager", data=big, headers=JSON)).status == 413


async def test_bearer_auth(make_client: ClientFactory) -> None:
    client = await make_client(secrets=Secrets("s3cret", None, None))
    for headers in (
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": "Basic czNjcmV0"},
        {"Authorization": "s3cret"},
    ):
        response = await client.post("/hooks/alertmanager", data=FIRING, headers={**JSON, **headers})
        assert response.status == 401, headers
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    ok = await client.post("/hooks/alertmanager", data=FIRING, headers={**JSON, "Authorization": "Bearer s3cret"})
    assert ok.status == 200
    assert stored_counts(client) == (1, 1, 1)


async def test_basic_auth(make_client: ClientFactory) -> None:
    client = await make_client(secrets=Secrets(None, "pa:ss", None), basic_username="alertmanager")

    def basic(user: str, password: str) -> dict[str, str]:
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        return {**JSON, "Authorization": f"Basic {token}"}

    for headers in (
        JSON,
        basic("alertmanager", "nope"),
        basic("someone", "pa:ss"),
        {**JSON, "Authorization": "Basic !!"},
    ):
        response = await client.post("/hooks/alertmanager", data=FIRING, headers=headers)
        assert response.status == 401
        assert "Basic" in response.headers["WWW-Authenticate"]
    assert (await client.post("/hooks/alertmanager", data=FIRING, headers=basic("alertmanager", "pa:ss"))).status == 200


async def test_auth_off_accepts_any_or_no_credentials(make_client: ClientFactory) -> None:
    client = await make_client()
    for headers in ({}, {"Authorization": "Bearer whatever"}):
        assert (await client.post("/hooks/alertmanager", data=FIRING, headers={**JSON, **headers})).status == 200


async def test_auth_is_checked_before_the_body(make_client: ClientFactory) -> None:
    client = await make_client(secrets=Secrets("s3cret", None, None))
    response = await client.post(
        "/hooks/alertmanager", data=b"x" * (2 * 1024 * 1024), headers={"Content-Type": "text/plain"}
    )
    assert response.status == 401


async def test_store_that_cannot_commit_gives_503_and_keeps_nothing(make_client: ClientFactory) -> None:
    client = await make_client()
    assert (await client.post("/hooks/alertmanager", data=FIRING, headers=JSON)).status == 200
    store = client.app[RUNTIME].store
    # Cap the file at its current size: the next insert fails exactly like a full disk.
    pages = await store.read(lambda conn: conn.execute("PRAGMA page_count").fetchone()[0])
    await store.write(lambda conn: conn.execute(f"PRAGMA max_page_count={pages}"))
    big = _mutated(lambda b: b["alerts"][0]["annotations"].update(pad="x" * 200_000))
    response = await client.post("/hooks/alertmanager", data=big, headers=JSON)
    assert response.status == 503
    assert response.headers["Retry-After"] == "5"
    assert stored_counts(client) == (1, 1, 1)
    metrics = await (await client.get("/metrics")).text()
    assert 'remediator_webhook_requests_total{code="503"} 1.0' in metrics


async def test_health_ready_and_metrics(make_client: ClientFactory) -> None:
    client = await make_client()
    assert (await client.get("/-/healthy")).status == 200
    assert (await client.get("/-/ready")).status == 200
    await client.post("/hooks/alertmanager", data=FIRING, headers=JSON)
    await client.post("/hooks/alertmanager", data=RESOLVED, headers=JSON)
    await client.post("/hooks/alertmanager", data=b"{", headers=JSON)
    text = await (await client.get("/metrics")).text()
    assert 'remediator_webhook_requests_total{code="200"} 2.0' in text
    assert 'remediator_webhook_requests_total{code="400"} 1.0' in text
    assert 'remediator_alerts_received_total{source="webhook",status="firing"} 1.0' in text
    assert 'remediator_alerts_received_total{source="webhook",status="resolved"} 1.0' in text
    assert "remediator_store_commit_seconds_count 2.0" in text
    assert 'remediator_build_info{version="' in text
