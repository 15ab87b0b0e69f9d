"""What the store makes of a notification: occurrences, transitions, and what the dispatcher gets."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from support.flow import alert_body

from service.alerts.webhook import parse
from service.clock import FakeClock
from service.store import MIGRATIONS, SQLiteStore
from service.times import timestamp


def body_of(fingerprint: str, status: str = "firing") -> bytes:
    return json.dumps(alert_body(fingerprint, status)).encode()


@asynccontextmanager
async def opened(path: Path) -> AsyncIterator[SQLiteStore]:
    store = SQLiteStore(path)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


async def test_the_hand_over_is_what_the_store_reads_back(tmp_path: Path) -> None:
    clock = FakeClock()
    async with opened(tmp_path / "s.db") as store:
        handed = []
        for body in (body_of("aa01"), body_of("aa01"), body_of("aa01", "resolved")):
            receipt = await store.record_notification(parse(body), body, clock.now())
            assert receipt.alert_count == 1
            handed.extend(receipt.events)
            clock.advance(1)
        read_back = await store.undispatched_alert_events(100)
        # the store's read shows each occurrence as it is now; the hand-over, as its delivery left it
        assert [replace(e.occurrence, status="", ends_at=None, receive_count=0) for e in read_back] == [
            replace(e.occurrence, status="", ends_at=None, receive_count=0) for e in handed
        ]
        assert [replace(e, occurrence=None) for e in read_back] == [replace(e, occurrence=None) for e in handed]
        assert read_back[-1] == handed[-1]
        assert [(e.status, e.previous_status, e.occurrence.receive_count) for e in handed] == [
            ("firing", None, 1),
            ("firing", "firing", 2),
            ("resolved", "firing", 3),
        ]


async def test_an_alert_no_rule_wants_is_stored_as_dispatched_unless_it_resolved(tmp_path: Path) -> None:
    clock = FakeClock()
    async with opened(tmp_path / "s.db") as store:
        receipts = []
        for body in (body_of("bb01"), body_of("bb01"), body_of("bb01", "resolved"), body_of("bb01", "resolved")):
            receipts.append(await store.record_notification(parse(body), body, clock.now(), wanted=[False]))
        # only the firing -> resolved transition has something to dispatch (closing what the alert
        # started); the resolved re-send after it has not
        assert [len(r.events) for r in receipts] == [0, 0, 1, 0]
        assert [e.id for e in await store.undispatched_alert_events(100)] == [e.id for e in receipts[2].events]
        with sqlite3.connect(store.path) as conn:
            rows = conn.execute("SELECT status, previous_status, dispatched_at IS NULL FROM alert_events ORDER BY id")
            assert rows.fetchall() == [
                ("firing", None, 0),
                ("firing", "firing", 0),
                ("resolved", "firing", 1),
                ("resolved", "resolved", 0),
            ]
            assert conn.execute("SELECT receive_count, status FROM occurrences").fetchall() == [(4, "resolved")]


async def test_a_store_from_the_previous_schema_is_upgraded_in_place(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path, isolation_level=None) as conn:
        for number, statements in enumerate(MIGRATIONS[:6], start=1):
            for statement in statements:
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version={number}")
        conn.execute(
            "INSERT INTO occurrences (fingerprint, starts_at, alertname, labels, annotations, generator_url, status,"
            " first_received_at, last_received_at, receive_count)"
            " VALUES ('cc01', '2026-11-27T19:43:48.250000+00:00', 'A', '{}', '{}', '', 'firing', 'x', 'x', 5)"
        )
    async with opened(path) as store:
        body = json.loads(body_of("cc01", "resolved"))
        body["alerts"][0]["startsAt"] = "2026-11-27T19:43:48.25Z"
        raw = json.dumps(body).encode()
        receipt = await store.record_notification(parse(raw), raw, FakeClock().now())
        [event] = receipt.events
        assert (event.previous_status, event.occurrence.receive_count) == ("firing", 6)
        with sqlite3.connect(path) as conn:
            assert conn.execute("PRAGMA user_version").fetchone() == (len(MIGRATIONS),)
            assert conn.execute("SELECT count(*) FROM occurrences").fetchone() == (1,)


async def test_writes_from_requests_still_being_read_join_one_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    commits = []
    clock = FakeClock()
    async with opened(tmp_path / "s.db") as store:
        commit = store._commit

        async def counted(works: list[Any]) -> list[Any]:
            commits.append(len(works))
            return await commit(works)

        monkeypatch.setattr(store, "_commit", counted)

        async def request(n: int) -> None:
            for _ in range(n % 4):  # its body still arriving: a few loop turns before it writes
                await asyncio.sleep(0)
            body = body_of(f"ee{n:02d}")
            await store.record_notification(parse(body), body, clock.now())

        await asyncio.gather(*(request(n) for n in range(30)))
        assert commits == [30]
        assert await store.count_notifications() == 30


async def test_a_slow_commit_sends_the_next_ones_to_the_writer_thread_until_one_is_quick(tmp_path: Path) -> None:
    clock = FakeClock()
    committed_on: list[str] = []
    # (start, end) of each commit as the store measures it: slow, then quick, then quick
    readings = iter([0.0, 1.0, 2.0, 2.001, 3.0, 3.001])
    store = SQLiteStore(tmp_path / "s.db", monotonic=lambda: next(readings))
    await store.open()
    try:
        assert store._write_conn is not None
        store._write_conn.set_trace_callback(
            lambda sql: committed_on.append(threading.current_thread().name) if sql == "COMMIT" else None
        )
        in_thread_after = []
        for n in range(3):
            body = body_of(f"ff{n:02d}")
            await store.record_notification(parse(body), body, clock.now())
            in_thread_after.append(store.commits_in_thread)
        store._write_conn.set_trace_callback(None)
        assert in_thread_after == [True, False, False]
        assert [name.startswith("store-writer") for name in committed_on] == [False, True, False]
        assert await store.count_notifications() == 3
    finally:
        await store.close()


async def test_a_re_send_updates_the_occurrence_and_keeps_when_it_was_first_received(tmp_path: Path) -> None:
    clock = FakeClock()
    async with opened(tmp_path / "s.db") as store:
        first_at = clock.now()
        body = body_of("bb01")
        await store.record_notification(parse(body), body, first_at)
        clock.advance(60)
        changed = alert_body("bb01")
        changed["alerts"][0]["annotations"]["summary"] = "still down after a minute"
        body = json.dumps(changed).encode()
        receipt = await store.record_notification(parse(body), body, clock.now())
        assert (receipt.events[0].previous_status, receipt.events[0].occurrence.receive_count) == ("firing", 2)
        with sqlite3.connect(tmp_path / "s.db") as conn:
            rows = conn.execute(
                "SELECT id, annotations, first_received_at, last_received_at, receive_count, status, previous_status"
                " FROM occurrences"
            ).fetchall()
    assert len(rows) == 1
    occurrence_id, annotations, first_received, last_received, count, status, previous = rows[0]
    assert occurrence_id == receipt.events[0].occurrence.id
    assert json.loads(annotations)["summary"] == "still down after a minute"
    assert (first_received, last_received) == (timestamp(first_at), timestamp(clock.now()))
    assert (count, status, previous) == (2, "firing", "firing")
