"""Retention prunes old finished executions and the alerts nothing refers to any more."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from support.flow import alert_body

from service.alerts.webhook import parse
from service.clock import FakeClock
from service.flow.retention import prune
from service.store import NewExecution, SQLiteStore


async def test_prune_keeps_recent_and_active_runs_and_what_they_refer_to(tmp_path: Path) -> None:
    clock = FakeClock()
    store = SQLiteStore(tmp_path / "retention.db")
    await store.open()
    try:
        occurrences = []
        for n in range(3):
            body = json.dumps(alert_body(f"eeee00000000000{n}")).encode()
            await store.record_notification(parse(body), body, clock.now())
            events = await store.undispatched_alert_events(100)
            await store.mark_dispatched([e.id for e in events], clock.now())
            occurrences.append(events[-1].occurrence.id)

        def execution(n: int, state: str) -> NewExecution:
            return NewExecution(f"ex-{n}", "r", "v", "p", "v", "t", occurrences[n], "fp", "A", "enforce", {}, state)

        await store.create_execution(execution(0, "succeeded"), clock.now())  # old and finished: pruned
        await store.create_execution(execution(1, "running"), clock.now())  # old but active: kept
        await store.add_event("ex-0", clock.now(), "note", "goes with its execution")
        clock.advance(31 * 86400)
        await store.create_execution(execution(2, "failed"), clock.now())  # recent: kept

        result = await prune(store, clock, retention_days=30)
        assert (result.executions, result.notifications) == (1, 3)
        assert await store.get_execution("ex-0") is None
        assert await store.get_execution("ex-1") is not None
        assert await store.get_execution("ex-2") is not None
        with sqlite3.connect(store.path) as conn:
            kept = {row[0] for row in conn.execute("SELECT id FROM occurrences")}
            assert kept == {occurrences[1], occurrences[2]}  # still referred to by a kept run
            assert conn.execute("SELECT count(*) FROM execution_events WHERE execution_id = 'ex-0'").fetchone() == (0,)
    finally:
        await store.close()
