"""One process owns a store, the database refuses a second run per (rule, occurrence), a lock held
by someone else never freezes the loop, and a file deleted under the service is noticed."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from support.flow import alert_body

from service.alerts.webhook import parse
from service.clock import FakeClock
from service.store import DuplicateExecution, NewExecution, SQLiteStore, StoreError


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    opened = SQLiteStore(tmp_path / "owned.db")
    await opened.open()
    yield opened
    await opened.close()


async def _occurrence(store: SQLiteStore, fingerprint: str = "aaaa000000000001") -> int:
    body = json.dumps(alert_body(fingerprint)).encode()
    receipt = await store.record_notification(parse(body), body, FakeClock().now())
    return receipt.events[0].occurrence.id


def _execution(execution_id: str, occurrence_id: int, run: int | None = 1, state: str = "queued") -> NewExecution:
    return NewExecution(
        execution_id,
        "rule",
        "v1",
        "quick",
        "v1",
        "node-1",
        occurrence_id,
        "fp",
        "A",
        "enforce",
        {},
        state,
        occurrence_run=run,
    )


async def test_a_second_store_on_the_same_file_is_refused_naming_the_holder(store: SQLiteStore) -> None:
    second = SQLiteStore(store.path)
    with pytest.raises(StoreError) as refused:
        await second.open()
    assert f"store {store.path} is owned by remediator pid {os.getpid()} on " in str(refused.value)
    # a reader (remediator report beside the service) is not an owner
    reader = SQLiteStore(store.path)
    await reader.open(own=False)
    assert await reader.count_notifications() == 0
    await reader.close()
    # the lock goes with its owner: once closed, another may open it
    await store.close()
    await second.open()
    await second.close()
    await store.open()


async def test_the_database_refuses_a_second_run_for_the_same_rule_and_occurrence(store: SQLiteStore) -> None:
    occurrence_id = await _occurrence(store)
    clock = FakeClock()
    await store.create_execution(_execution("ex-first", occurrence_id), clock.now())
    with pytest.raises(DuplicateExecution) as duplicate:
        await store.create_execution(_execution("ex-second", occurrence_id), clock.now())
    assert duplicate.value.existing_id == "ex-first"
    # a rerun is the next number; refusals that decide nothing (a pause) have none and never collide
    await store.create_execution(_execution("ex-rerun", occurrence_id, run=2), clock.now())
    for n in range(3):
        paused = _execution(f"ex-paused-{n}", occurrence_id, state="refused", run=None)
        await store.create_execution(paused, clock.now())
    prior = await store.execution_for_occurrence("rule", occurrence_id)
    assert prior is not None and (prior.id, prior.occurrence_run) == ("ex-rerun", 2)
    assert await store.get_execution("ex-second") is None


async def test_concurrent_decisions_for_one_occurrence_make_one_execution(store: SQLiteStore) -> None:
    """Two decisions that both read "no run yet" (two posts of one alert racing): one insert wins."""
    occurrence_id = await _occurrence(store)
    results = await asyncio.gather(
        *(store.create_execution(_execution(f"ex-{n}", occurrence_id), FakeClock().now()) for n in range(10)),
        return_exceptions=True,
    )
    assert sum(result is None for result in results) == 1
    assert all(isinstance(result, DuplicateExecution) for result in results if result is not None)
    count = await store.read(lambda conn: conn.execute("SELECT count(*) FROM executions").fetchone()[0])
    assert count == 1


async def test_a_store_from_before_the_key_numbers_its_runs(tmp_path: Path) -> None:
    """Upgrading a store whose (rule, occurrence) already has a run and a rerun numbers them 1 and 2."""
    path = tmp_path / "old.db"
    store = SQLiteStore(path)
    await store.open()
    occurrence_id = await _occurrence(store)
    await store.close()
    conn = sqlite3.connect(path)
    conn.executescript(  # back to schema 7: undo migrations 10 (paging), 9 (occurrence source) and 8 (the key)
        "DROP TABLE step_processes; DROP INDEX executions_page_due; DROP INDEX executions_target;"
        " DROP INDEX escalations_execution; ALTER TABLE executions DROP COLUMN page_due_at;"
        " DROP INDEX occurrences_firing; ALTER TABLE occurrences DROP COLUMN source;"
        " DROP INDEX executions_one_run_per_occurrence; ALTER TABLE executions DROP COLUMN occurrence_run"
    )
    for n, created in enumerate(("2026-01-01T00:00:00", "2026-01-01T01:00:00")):
        conn.execute(
            "INSERT INTO executions (id, created_at, updated_at, rule, rule_version, playbook, playbook_version,"
            " target, occurrence_id, fingerprint, alertname, mode, params, state)"
            " VALUES (?, ?, ?, 'rule', 'v', 'p', 'v', 't', ?, 'fp', 'A', 'enforce', '{}', 'succeeded')",
            (f"ex-{n}", created, created, occurrence_id),
        )
    conn.execute("PRAGMA user_version = 7")
    conn.commit()
    conn.close()
    await store.open()
    try:
        prior = await store.execution_for_occurrence("rule", occurrence_id)
        assert prior is not None and (prior.id, prior.occurrence_run) == ("ex-1", 2)
    finally:
        await store.close()


async def test_a_write_lock_held_by_another_connection_never_freezes_the_loop(store: SQLiteStore) -> None:
    other = sqlite3.connect(store.path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # a person's sqlite3 shell, mid-transaction
    write = asyncio.create_task(_occurrence(store))
    gaps = []
    last = time.monotonic()
    for _ in range(20):  # the loop keeps turning while the write waits for the lock
        await asyncio.sleep(0.01)
        now = time.monotonic()
        gaps.append(now - last)
        last = now
    assert not write.done()
    assert max(gaps) < 0.5, gaps
    other.execute("COMMIT")
    other.close()
    assert await asyncio.wait_for(write, 10) > 0


async def test_a_deleted_store_file_is_noticed_before_a_write_is_acknowledged(store: SQLiteStore) -> None:
    await _occurrence(store, "aaaa000000000001")
    assert store.problem() is None
    for suffix in ("", "-wal", "-shm"):
        Path(f"{store.path}{suffix}").unlink(missing_ok=True)
    with pytest.raises(StoreError, match="was deleted or replaced while open"):
        await _occurrence(store, "aaaa000000000002")
    assert "was deleted or replaced" in (store.problem() or "")


async def test_a_replaced_store_file_is_noticed(store: SQLiteStore, tmp_path: Path) -> None:
    replacement = tmp_path / "replacement.db"
    sqlite3.connect(replacement).close()
    os.replace(replacement, store.path)
    with pytest.raises(StoreError, match="was deleted or replaced while open"):
        await _occurrence(store)


async def test_a_store_that_refuses_writes_is_refused_at_open(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A read-only mount or an immutable file (access(2) says no even to root): a clear error at
    start, not a traceback when recovery first writes."""
    path = tmp_path / "ro.db"
    store = SQLiteStore(path)
    await store.open()
    await store.close()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == path else real_access(p, mode))
    with pytest.raises(StoreError, match=rf"store {path} is not writable"):
        await store.open()
    monkeypatch.undo()
    await store.open()  # the failed open released the ownership lock
    await store.close()
