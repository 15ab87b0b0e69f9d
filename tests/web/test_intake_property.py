"""Property: whatever bytes arrive, a healthy store never yields a 5xx, and a non-2xx stores nothing."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.settings import Secrets, Settings
from service.web.app import create_app
from service.web.runtime import RUNTIME

FIRING = json.loads(
    (Path(__file__).parent.parent / "fixtures/alertmanager/firing-nats-jetstream-unhealthy.json").read_text()
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)


def _near_valid() -> st.SearchStrategy[Any]:
    """The real payload with one field swapped for an arbitrary value: reaches the deeper checks."""
    paths = [
        ("version",),
        ("status",),
        ("alerts",),
        ("groupKey",),
        ("alerts", 0, "labels"),
        ("alerts", 0, "startsAt"),
        ("alerts", 0, "endsAt"),
        ("alerts", 0, "fingerprint"),
        ("alerts", 0, "status"),
        ("commonLabels",),
        ("truncatedAlerts",),
        ("alerts", 0, "labels", "alertname"),
    ]

    def swap(path: tuple[Any, ...], value: Any) -> Any:
        body = json.loads(json.dumps(FIRING))
        target = body
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
        return body

    return st.builds(swap, st.sampled_from(paths), json_values | st.text())


class _Harness:
    def __init__(self, tmp: Path) -> None:
        self.loop = asyncio.new_event_loop()
        # Each 200 stores one notification: nothing acknowledged from memory (tests/store/test_store_remembered.py)
        config = Settings.model_validate(
            {"store": {"path": str(tmp / "prop.db"), "remembered_occurrences": 0}, "rules": [], "playbooks": []}
        )

        async def start() -> TestClient[Any, Any]:
            client: TestClient[Any, Any] = TestClient(TestServer(create_app(config, Secrets(None, None, None))))
            await client.start_server()
            return client

        self.client = self.loop.run_until_complete(start())

    def post(self, body: bytes) -> int:
        async def go() -> int:
            response = await self.client.post(
                "/hooks/alertmanager", data=body, headers={"Content-Type": "application/json"}
            )
            await response.read()
            return response.status

        return self.loop.run_until_complete(go())

    def stored(self) -> int:
        with sqlite3.connect(self.client.app[RUNTIME].store.path) as conn:
            return int(conn.execute("SELECT count(*) FROM notifications").fetchone()[0])

    def close(self) -> None:
        self.loop.run_until_complete(self.client.close())
        self.loop.close()


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[_Harness]:
    h = _Harness(tmp_path)
    yield h
    h.close()


def _check(harness: _Harness, body: bytes) -> None:
    before = harness.stored()
    status = harness.post(body)
    assert status < 500, (status, body[:200])
    after = harness.stored()
    if status == 200:
        assert after == before + 1
    else:
        assert status in (400, 413, 415)
        assert after == before


_SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@_SETTINGS
@given(body=st.binary(max_size=2048))
def test_arbitrary_bytes_never_5xx(harness: _Harness, body: bytes) -> None:
    _check(harness, body)


@_SETTINGS
@given(value=json_values)
def test_arbitrary_json_never_5xx(harness: _Harness, value: Any) -> None:
    _check(harness, json.dumps(value).encode())


@_SETTINGS
@given(value=_near_valid())
def test_near_valid_payloads_never_5xx(harness: _Harness, value: Any) -> None:
    _check(harness, json.dumps(value).encode())


# RFC 3339 times anywhere a datetime can hold, with offsets: at the ends of the range an offset
# moves the UTC instant outside it, which must be a 400, never an overflow (a 500).
_offsets = st.integers(min_value=-23 * 60 - 59, max_value=23 * 60 + 59).map(lambda m: timezone(timedelta(minutes=m)))
_rfc3339_times = st.one_of(
    st.datetimes(timezones=_offsets),
    st.sampled_from([datetime.min, datetime.max]).flatmap(lambda d: _offsets.map(lambda tz: d.replace(tzinfo=tz))),
).map(lambda d: d.isoformat())


@_SETTINGS
@given(field=st.sampled_from(["startsAt", "endsAt"]), value=_rfc3339_times)
def test_any_alert_time_never_5xx(harness: _Harness, field: str, value: str) -> None:
    body = json.loads(json.dumps(FIRING))
    body["alerts"][0][field] = value
    _check(harness, json.dumps(body).encode())
