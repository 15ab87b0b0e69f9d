"""Re-sends acknowledged from memory: what is remembered (only what is committed, bounded), what
is answered without a commit (a pure re-send) and what never is (anything that changes), and that
the memory stays the store's: a deleted file, retention, a restart."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from support.flow import alert_body

from service.alerts.webhook import parse
from service.clock import FakeClock
from service.store import SQLiteStore, StoreError
from service.store.remembered import BODY_ALERTS_LIMIT, Known, RememberedOccurrences, SeenBody, body_digest
from service.times import timestamp

STARTS = "2026-11-27T19:53:15.250000+00:00"


@asynccontextmanager
async def opened(path: Path, remembered: int = 1000) -> AsyncIterator[SQLiteStore]:
    store = SQLiteStore(path, remembered=remembered)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


def body_of(
    fingerprint: str = "aa01", status: str = "firing", change: Callable[[dict[str, Any]], None] | None = None
) -> bytes:
    body = alert_body(fingerprint, status)
    if change is not None:
        change(body["alerts"][0])
    return json.dumps(body).encode()


async def deliver(store: SQLiteStore, clock: FakeClock, body: bytes, wanted: bool = True) -> int | None:
    """As the intake does: the notification id, None when acknowledged from memory."""
    now = clock.now()
    clock.advance(1)
    if store.acknowledge_repeated_body(body, now) is not None:
        return None
    notification = parse(body)
    if store.acknowledge_resend(notification, body, now):
        return None
    return (await store.record_notification(notification, body, now, [wanted])).notification_id


def wants_all(status: str, labels: Mapping[str, str]) -> bool:
    return True


def wants_none(status: str, labels: Mapping[str, str]) -> bool:
    return False


def occurrences(path: Path) -> list[tuple[Any, ...]]:
    with sqlite3.connect(path) as conn:
        return conn.execute(
            "SELECT fingerprint, status, receive_count, last_received_at, annotations FROM occurrences ORDER BY id"
        ).fetchall()


def count(path: Path, table: str) -> int:
    with sqlite3.connect(path) as conn:
        return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


def test_the_memory_stays_bounded_under_a_million_distinct_alerts() -> None:
    memory = RememberedOccurrences(limit=50_000)
    for n in range(1_000_000):
        memory.remember((f"{n:016x}", STARTS), Known(n, n, b"state"))
    assert len(memory) == 50_000
    # the most recently delivered stay, the oldest went
    assert memory.get((f"{999_999:016x}", STARTS)) == Known(999_999, 999_999, b"state")
    assert memory.get((f"{950_000:016x}", STARTS)) is not None
    assert memory.get((f"{949_999:016x}", STARTS)) is None
    # so do the deliveries waiting to be written: past the bound, they are committed at once
    assert memory.has_room(50_000) and not memory.has_room(50_001)


def test_a_later_commit_is_never_replaced_by_an_earlier_one() -> None:
    memory = RememberedOccurrences(limit=10)
    key = ("aa01", STARTS)
    memory.remember(key, Known(1, 7, b"newer"))
    memory.remember(key, Known(1, 6, b"older"))
    assert memory.get(key) == Known(1, 7, b"newer")


async def test_a_pure_re_send_is_acknowledged_from_memory_and_written_later(tmp_path: Path) -> None:
    clock = FakeClock()
    async with opened(tmp_path / "s.db") as store:
        assert await deliver(store, clock, body_of()) == 1
        last_at = clock.now()
        assert [await deliver(store, clock, body_of()) for _ in range(2)] == [None, None]
        # nothing written: the occurrence was committed by the first delivery
        [(_, _, receive_count, _, _)] = occurrences(store.path)
        assert (receive_count, count(store.path, "notifications"), count(store.path, "alert_events")) == (1, 1, 1)
        [event] = await store.write_resends(wants_all)
        # one write for both: their count and last-seen time, one event, the latest notification
        [(_, status, receive_count, last_received_at, _)] = occurrences(store.path)
        assert (status, receive_count, last_received_at) == ("firing", 3, timestamp(last_at + timedelta(seconds=1)))
        assert (event.status, event.previous_status, event.occurrence.receive_count) == ("firing", "firing", 3)
        assert [e.id for e in await store.undispatched_alert_events(10)][-1] == event.id
        assert count(store.path, "notifications") == 2
        assert await store.write_resends(wants_all) == ()  # nothing waits any more


async def test_a_body_re_sent_byte_for_byte_is_recognised_by_its_bytes(tmp_path: Path) -> None:
    clock = FakeClock()
    async with opened(tmp_path / "s.db") as store:
        body = body_of()
        # committed, then a first re-send checked alert by alert: only a re-sent body is remembered
        assert store.acknowledge_repeated_body(body, clock.now()) is None
        assert await deliver(store, clock, body) == 1
        assert store.acknowledge_repeated_body(body, clock.now()) is None
        assert store.acknowledge_resend(parse(body), body, clock.now())
        # from now on its bytes are enough: the notification as validated then
        repeated = store.acknowledge_repeated_body(body, clock.now())
        assert repeated is not None and repeated.alerts[0].fingerprint == "aa01"
        # the same alert in other bytes is still a re-send, checked alert by alert
        spaced = body.replace(b", ", b",  ")
        assert store.acknowledge_repeated_body(spaced, clock.now()) is None
        assert await deliver(store, clock, spaced) is None
        await store.write_resends(wants_all)
        assert occurrences(store.path)[0][2] == 4


async def test_a_re_sent_body_whose_occurrence_changed_since_is_committed(tmp_path: Path) -> None:
    clock = FakeClock()
    async with opened(tmp_path / "s.db") as store:
        body, changed = body_of(), body_of(change=_annotations)
        await deliver(store, clock, body)
        assert [await deliver(store, clock, body) for _ in range(2)] == [None, None]
        assert await deliver(store, clock, changed) is not None
        # a change to an occurrence stored before is re-sent as it is now: its bytes are remembered
        assert store.acknowledge_repeated_body(changed, clock.now()) is not None
        # the old bytes no longer say what is stored: not acknowledged, committed as the change back
        assert store.acknowledge_repeated_body(body, clock.now()) is None
        assert await deliver(store, clock, body) is not None
        assert store.acknowledge_repeated_body(changed, clock.now()) is None
        await store.write_resends(wants_all)
        assert occurrences(store.path)[0][2] == 6


async def test_a_re_sent_body_is_not_acknowledged_once_its_occurrence_is_forgotten(tmp_path: Path) -> None:
    clock = FakeClock()
    async with opened(tmp_path / "s.db") as store:
        body = body_of()
        await deliver(store, clock, body)
        await deliver(store, clock, body)
        assert store.acknowledge_repeated_body(body, clock.now()) is not None
        store.remembered.forget([("aa01", STARTS)])  # as retention does
        assert store.acknowledge_repeated_body(body, clock.now()) is None


def test_the_bodies_remembered_are_bounded_in_alerts() -> None:
    memory = RememberedOccurrences(limit=50_000)
    notification = parse(body_of())
    for n in range(BODY_ALERTS_LIMIT + 100):
        key = (f"{n:016x}", STARTS)
        memory.remember(key, Known(n, n, b"state"))
        memory.remember_body(f"{n}".encode(), SeenBody(notification, ((key, b"state"),)))
    # the oldest bodies went, though their occurrences are still remembered
    assert memory.seen_body(b"0") is None and memory.seen_body(b"99") is None
    assert memory.seen_body(b"100") is not None
    assert memory.seen_body(f"{BODY_ALERTS_LIMIT + 99}".encode()) is not None
    # a memory for fewer occurrences keeps as few bodies' alerts
    small = RememberedOccurrences(limit=3)
    for n in range(5):
        key = (f"{n:016x}", STARTS)
        small.remember(key, Known(n, n, b"state"))
        small.remember_body(body_digest(f"{n}".encode()), SeenBody(notification, ((key, b"state"),)))
    assert [small.seen_body(body_digest(f"{n}".encode())) is not None for n in range(5)] == [False] * 2 + [True] * 3


async def test_a_re_send_no_rule_wants_is_written_as_dispatched(tmp_path: Path) -> None:
    clock = FakeClock()
    async with opened(tmp_path / "s.db") as store:
        await deliver(store, clock, body_of(), wanted=False)
        assert await deliver(store, clock, body_of(), wanted=False) is None
        assert await store.write_resends(wants_none) == ()
        assert await store.undispatched_alert_events(10) == []
        assert occurrences(store.path)[0][2] == 2


def _annotations(alert: dict[str, Any]) -> None:
    alert["annotations"]["summary"] = "still down"


def _labels(alert: dict[str, Any]) -> None:
    alert["labels"]["severity"] = "page"


def _ends_at(alert: dict[str, Any]) -> None:
    alert["endsAt"] = "2026-11-27T20:10:00Z"


@pytest.mark.parametrize("change", [_annotations, _labels, _ends_at], ids=["annotations", "labels", "endsAt"])
async def test_a_re_send_that_changes_anything_is_committed_before_it_returns(
    tmp_path: Path, change: Callable[[dict[str, Any]], None]
) -> None:
    clock = FakeClock()
    async with opened(tmp_path / "s.db") as store:
        await deliver(store, clock, body_of())
        assert await deliver(store, clock, body_of()) is None
        assert await deliver(store, clock, body_of(change=change)) is not None
        # the waiting delivery went in the same commit, before it: the count is whole and in order
        assert occurrences(store.path)[0][2] == 3
        # and the changed state is what a re-send of it must now repeat
        assert await deliver(store, clock, body_of(change=change)) is None
        assert await deliver(store, clock, body_of()) is not None


async def test_a_resolve_is_committed_and_a_stale_firing_after_it_changes_nothing(tmp_path: Path) -> None:
    clock = FakeClock()
    async with opened(tmp_path / "s.db") as store:
        await deliver(store, clock, body_of())
        assert await deliver(store, clock, body_of(status="resolved")) is not None
        assert occurrences(store.path)[0][1] == "resolved"
        assert await deliver(store, clock, body_of(status="resolved")) is None
        # a late firing (the other Alertmanager of a pair) is committed, and leaves it resolved
        assert await deliver(store, clock, body_of()) is not None
        await store.write_resends(wants_all)
        assert occurrences(store.path)[0][1:3] == ("resolved", 4)


async def test_a_notification_with_one_new_alert_is_committed_whole(tmp_path: Path) -> None:
    clock = FakeClock()
    async with opened(tmp_path / "s.db") as store:
        await deliver(store, clock, body_of("aa01"))
        both = json.loads(body_of("aa01"))
        both["alerts"].append(alert_body("aa02")["alerts"][0])
        body = json.dumps(both).encode()
        receipt = await store.record_notification(parse(body), body, clock.now(), [True, True])
        assert receipt.notification_id is not None and len(receipt.events) == 2
        assert [row[2] for row in occurrences(store.path)] == [2, 1]


async def test_only_as_many_occurrences_as_the_bound_are_remembered(tmp_path: Path) -> None:
    clock = FakeClock()
    async with opened(tmp_path / "s.db", remembered=3) as store:
        for n in range(5):
            await deliver(store, clock, body_of(f"ab{n:02d}"))
        assert len(store.remembered) == 3
        assert await deliver(store, clock, body_of("ab00")) is not None  # forgotten: committed again
        assert await deliver(store, clock, body_of("ab04")) is None


async def test_no_memory_commits_every_delivery(tmp_path: Path) -> None:
    clock = FakeClock()
    async with opened(tmp_path / "s.db", remembered=0) as store:
        assert [await deliver(store, clock, body_of()) for _ in range(3)] == [1, 2, 3]


async def test_a_re_send_to_a_deleted_store_file_is_refused(tmp_path: Path) -> None:
    """A 200 from memory promises the occurrence is stored: not in a file that is gone."""
    clock = FakeClock()
    async with opened(tmp_path / "s.db") as store:
        body = body_of()
        await deliver(store, clock, body)
        await deliver(store, clock, body)  # its bytes are remembered too
        for suffix in ("", "-wal", "-shm"):
            Path(f"{store.path}{suffix}").unlink(missing_ok=True)
        with pytest.raises(StoreError, match="deleted or replaced"):
            store.acknowledge_repeated_body(body, clock.now())
        spaced = body.replace(b", ", b",  ")
        with pytest.raises(StoreError, match="deleted or replaced"):
            store.acknowledge_resend(parse(spaced), spaced, clock.now())


async def test_the_memory_starts_empty_after_a_restart_and_closing_writes_what_waits(tmp_path: Path) -> None:
    clock = FakeClock()
    async with opened(tmp_path / "s.db") as store:
        await deliver(store, clock, body_of())
        assert await deliver(store, clock, body_of()) is None
    # a graceful close wrote the waiting delivery
    assert occurrences(tmp_path / "s.db")[0][2] == 2
    async with opened(tmp_path / "s.db") as store:
        # the first re-send after a restart is committed, and remembered from then on
        assert await deliver(store, clock, body_of()) is not None
        assert await deliver(store, clock, body_of()) is None


async def test_retention_forgets_what_it_deletes_and_keeps_what_has_deliveries_waiting(tmp_path: Path) -> None:
    clock = FakeClock()
    async with opened(tmp_path / "s.db") as store:
        await deliver(store, clock, body_of("ac01"), wanted=False)
        await deliver(store, clock, body_of("ac02"), wanted=False)
        clock.advance(3600)
        assert await deliver(store, clock, body_of("ac02"), wanted=False) is None  # waits to be written
        result = await store.prune(clock.now())
        assert result.occurrences == 1
        assert [row[0] for row in occurrences(store.path)] == ["ac02"]
        # the deleted one is no longer remembered: its re-send is committed, as a new occurrence
        assert await deliver(store, clock, body_of("ac01"), wanted=False) is not None
        await store.write_resends(wants_none)
        assert [row[:3] for row in occurrences(store.path)] == [("ac02", "firing", 2), ("ac01", "firing", 1)]
