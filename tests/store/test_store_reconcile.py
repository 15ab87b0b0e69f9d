"""What the reconciler relies on in the store: how each occurrence first came, status that moves
forward only, and the two reads (statuses of known occurrences, those still firing). The Protocol
behaviour runs on SQLite and on the in-memory test store alike."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from support.flow import alert_body
from support.memory_store import MemoryStore

from service.alerts.webhook import parse
from service.clock import FakeClock
from service.store import MIGRATIONS, OccurrenceSource, SQLiteStore
from service.times import timestamp

STARTS = datetime(2026, 11, 27, 19, 53, 15, 250000, tzinfo=UTC)


def body_of(fingerprint: str, status: str = "firing", starts_at: datetime = STARTS) -> bytes:
    body = alert_body(fingerprint, status)
    body["alerts"][0]["startsAt"] = starts_at.isoformat()
    return json.dumps(body).encode()


async def deliver(
    store: Any,
    clock: FakeClock,
    fingerprint: str,
    status: str = "firing",
    starts_at: datetime = STARTS,
    wanted: bool = True,
    source: OccurrenceSource = "webhook",
) -> Any:
    body = body_of(fingerprint, status, starts_at)
    receipt = await store.record_notification(parse(body), body, clock.now(), [wanted], source=source)
    clock.advance(1)
    return receipt


@pytest.fixture(params=["sqlite", "memory"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Any]:
    opened = SQLiteStore(tmp_path / "s.db") if request.param == "sqlite" else MemoryStore(tmp_path / "s.db")
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
async def sqlite_store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    opened = SQLiteStore(tmp_path / "s.db")
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()


# --- how each occurrence first came ---------------------------------------------------------------


async def test_an_occurrence_keeps_how_it_first_came_whatever_brings_it_later(store: Any) -> None:
    clock = FakeClock()
    by_reconcile = await deliver(store, clock, "aa01", source="reconcile")
    again_by_webhook = await deliver(store, clock, "aa01")
    by_webhook = await deliver(store, clock, "aa02")
    again_by_reconcile = await deliver(store, clock, "aa02", source="reconcile")
    resolved_by_webhook = await deliver(store, clock, "aa01", "resolved")
    handed = [r.events[0].occurrence for r in (by_reconcile, again_by_webhook, by_webhook, again_by_reconcile)]
    handed.append(resolved_by_webhook.events[0].occurrence)
    assert [(o.fingerprint, o.source, o.receive_count) for o in handed] == [
        ("aa01", "reconcile", 1),
        ("aa01", "reconcile", 2),
        ("aa02", "webhook", 1),
        ("aa02", "webhook", 2),
        ("aa01", "reconcile", 3),
    ]
    read_back = await store.undispatched_alert_events(100)
    assert [e.occurrence.source for e in read_back] == ["reconcile", "reconcile", "webhook", "webhook", "reconcile"]
    assert {o.fingerprint: o.source for o in await store.firing_occurrences(10)} == {"aa02": "webhook"}


async def test_the_source_is_stored_and_defaults_to_webhook(sqlite_store: SQLiteStore) -> None:
    clock = FakeClock()
    body = body_of("ab01")
    await sqlite_store.record_notification(parse(body), body, clock.now())  # no source: a webhook
    await deliver(sqlite_store, clock, "ab02", source="reconcile")
    await deliver(sqlite_store, clock, "ab02")
    with sqlite3.connect(sqlite_store.path) as conn:
        rows = conn.execute("SELECT fingerprint, source, receive_count FROM occurrences ORDER BY id").fetchall()
    assert rows == [("ab01", "webhook", 1), ("ab02", "reconcile", 2)]


# --- status moves forward only --------------------------------------------------------------------


@pytest.mark.parametrize("wanted", [True, False])
async def test_a_stale_firing_after_the_resolve_leaves_it_resolved_and_hands_nothing_over(
    store: Any, wanted: bool
) -> None:
    clock = FakeClock()
    await deliver(store, clock, "bb01", wanted=wanted)
    resolved = await deliver(store, clock, "bb01", "resolved", wanted=wanted)
    [resolve] = resolved.events
    await store.mark_dispatched([e.id for e in await store.undispatched_alert_events(100)], clock.now())

    stale = await deliver(store, clock, "bb01", "firing", wanted=wanted)  # an HA pair's late second copy

    assert stale.events == ()  # nothing for the dispatcher: it must never start a run
    assert await store.undispatched_alert_events(100) == []
    assert await store.firing_occurrences(10) == []
    assert await store.occurrence_statuses([("bb01", STARTS)]) == {("bb01", STARTS): "resolved"}
    # the next delivery still finds it resolved (a resolved re-send is no transition) and counted
    again = await deliver(store, clock, "bb01", "resolved", wanted=True)
    [event] = again.events
    assert (event.previous_status, event.occurrence.status) == ("resolved", "resolved")
    assert event.occurrence.receive_count == 4
    assert event.occurrence.ends_at == resolve.occurrence.ends_at


async def test_a_stale_firing_counts_as_a_delivery_and_is_stored_as_dispatched(sqlite_store: SQLiteStore) -> None:
    clock = FakeClock()
    await deliver(sqlite_store, clock, "bc01")
    await deliver(sqlite_store, clock, "bc01", "resolved")
    with sqlite3.connect(sqlite_store.path) as conn:
        before = conn.execute("SELECT ends_at, labels, annotations FROM occurrences").fetchone()
    stale_at = clock.now()
    changed = alert_body("bc01")
    changed["alerts"][0]["annotations"]["summary"] = "an older copy"
    changed["alerts"][0]["startsAt"] = STARTS.isoformat()
    body = json.dumps(changed).encode()
    receipt = await sqlite_store.record_notification(parse(body), body, stale_at)
    assert receipt.events == ()
    with sqlite3.connect(sqlite_store.path) as conn:
        occurrence = conn.execute(
            "SELECT status, previous_status, receive_count, last_received_at, ends_at, labels, annotations"
            " FROM occurrences"
        ).fetchone()
        events = conn.execute("SELECT status, previous_status, dispatched_at FROM alert_events ORDER BY id").fetchall()
    assert occurrence[:4] == ("resolved", "resolved", 3, timestamp(stale_at))
    assert occurrence[4:] == before  # the resolve's end and contents stay
    assert events[-1] == ("firing", "resolved", timestamp(stale_at))
    assert [e[:2] for e in events] == [("firing", None), ("resolved", "firing"), ("firing", "resolved")]


async def test_fired_again_with_a_new_start_is_a_new_occurrence(store: Any) -> None:
    clock = FakeClock()
    await deliver(store, clock, "bd01")
    await deliver(store, clock, "bd01", "resolved")
    again = await deliver(store, clock, "bd01", starts_at=STARTS + timedelta(seconds=4))
    [event] = again.events
    assert (event.status, event.previous_status, event.occurrence.receive_count) == ("firing", None, 1)
    assert [o.starts_at for o in await store.firing_occurrences(10)] == [STARTS + timedelta(seconds=4)]


# --- the reconciler's reads -----------------------------------------------------------------------


async def test_statuses_of_the_occurrences_the_store_knows_under_the_callers_own_keys(store: Any) -> None:
    clock = FakeClock()
    await deliver(store, clock, "cc01")
    await deliver(store, clock, "cc02")
    await deliver(store, clock, "cc02", "resolved")
    berlin = timezone(timedelta(hours=1))
    keys = [
        ("cc01", STARTS.astimezone(berlin)),  # the same instant written in another zone
        ("cc02", STARTS),
        ("cc01", STARTS + timedelta(microseconds=1)),  # another start: another occurrence
        ("zz99", STARTS),
    ]
    statuses = await store.occurrence_statuses(keys)
    assert statuses == {keys[0]: "firing", keys[1]: "resolved"}
    [(_, first_start)] = [k for k in statuses if k[0] == "cc01"]
    assert first_start.tzinfo == berlin  # the caller's datetime, not the store's
    assert await store.occurrence_statuses([]) == {}


async def test_statuses_for_more_keys_than_one_statement_may_bind(sqlite_store: SQLiteStore) -> None:
    clock = FakeClock()
    starts = [STARTS + timedelta(seconds=n) for n in range(1200)]
    for n in range(0, len(starts), 100):
        bodies = []
        for start in starts[n : n + 100]:
            body = alert_body("dd01")
            body["alerts"][0]["startsAt"] = start.isoformat()
            bodies.append(body["alerts"][0])
        notification = alert_body("dd01")
        notification["alerts"] = bodies
        raw = json.dumps(notification).encode()
        await sqlite_store.record_notification(parse(raw), raw, clock.now())
    asked = [("dd01", start) for start in starts] + [("dd02", start) for start in starts]
    statuses = await sqlite_store.occurrence_statuses(asked)
    assert statuses == {("dd01", start): "firing" for start in starts}


async def test_firing_occurrences_oldest_first_up_to_the_limit(store: Any) -> None:
    clock = FakeClock()
    # delivered out of order: the oldest start is not the first received
    await deliver(store, clock, "ee01", starts_at=STARTS + timedelta(minutes=2))
    await deliver(store, clock, "ee02", starts_at=STARTS)
    await deliver(store, clock, "ee03", starts_at=STARTS + timedelta(minutes=1), source="reconcile")
    await deliver(store, clock, "ee04", starts_at=STARTS - timedelta(minutes=1))
    await deliver(store, clock, "ee04", "resolved", starts_at=STARTS - timedelta(minutes=1))
    await deliver(store, clock, "ee05", starts_at=STARTS + timedelta(minutes=3), wanted=False)
    firing = await store.firing_occurrences(10)
    assert [o.fingerprint for o in firing] == ["ee02", "ee03", "ee01", "ee05"]
    assert [o.source for o in firing] == ["webhook", "reconcile", "webhook", "webhook"]
    assert all(o.status == "firing" and o.receive_count == 1 for o in firing)
    assert [o.fingerprint for o in await store.firing_occurrences(2)] == ["ee02", "ee03"]


async def test_firing_occurrences_read_the_partial_index(sqlite_store: SQLiteStore) -> None:
    plan = await sqlite_store.read(
        lambda conn: conn.execute(
            "EXPLAIN QUERY PLAN SELECT id FROM occurrences WHERE status = 'firing' ORDER BY starts_at, id LIMIT 5"
        ).fetchall()
    )
    assert any("occurrences_firing" in row[3] for row in plan)


async def test_an_existing_store_is_upgraded_and_its_occurrences_came_by_webhook(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path, isolation_level=None) as conn:
        for number, statements in enumerate(MIGRATIONS[:-1], start=1):
            for statement in statements:
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version={number}")
        conn.execute(
            "INSERT INTO occurrences (fingerprint, starts_at, alertname, labels, annotations, generator_url, status,"
            " first_received_at, last_received_at, receive_count)"
            f" VALUES ('ff01', '{timestamp(STARTS)}', 'A', '{{}}', '{{}}', '', 'firing', 'x', 'x', 5)"
        )
    store = SQLiteStore(path)
    await store.open()
    try:
        [occurrence] = await store.firing_occurrences(10)
        assert (occurrence.fingerprint, occurrence.source, occurrence.receive_count) == ("ff01", "webhook", 5)
        assert await store.occurrence_statuses([("ff01", STARTS)]) == {("ff01", STARTS): "firing"}
    finally:
        await store.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (len(MIGRATIONS),)
