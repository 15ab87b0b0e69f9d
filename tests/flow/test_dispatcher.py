"""The dispatcher's two inputs, the intake's hand-over and the store's queue: each event once."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Protocol, cast

import pytest
from support.fake_escalation import RecordingEscalation
from support.flow import QUICK_PLAYBOOK, alert_body, write_config
from support.memory_store import MemoryStore

from service.alerts.webhook import parse
from service.clock import FakeClock
from service.flow import dispatcher as dispatcher_module
from service.flow import retries
from service.flow.admission import StormGuard
from service.flow.dispatcher import Dispatcher, DispatchSettings
from service.rules.loading import load_ruleset
from service.store import DispatchStore, IntakeStore, NotificationReceipt, SQLiteStore, StoreError

# Shadow mode: each dispatched alert records one decision and runs nothing, so counting decisions
# counts dispatches (a second dispatch of an occurrence would be a "repeat").
SHADOW_RULES = """
rules:
  - name: watch
    match: ['alertname="NatsJetStreamUnhealthy"']
    playbook: quick
    params: {node: "{{ labels.instance }}"}
    mode: shadow
"""


class DispatcherTestStore(IntakeStore, DispatchStore, Protocol):
    async def open(self) -> None: ...
    async def close(self) -> None: ...

    @property
    def path(self) -> Path: ...


class Harness:
    def __init__(self, root: Path, store_kind: str = "sqlite") -> None:
        config = write_config(root, SHADOW_RULES, {"quick": QUICK_PLAYBOOK})
        ruleset = load_ruleset(config["rules"], config["playbooks"], root)
        self.clock = FakeClock()
        self.store: DispatcherTestStore = (
            SQLiteStore(root / "dispatch.db") if store_kind == "sqlite" else MemoryStore(root / "dispatch.db")
        )
        self.decisions: list[str] = []
        self.escalation = RecordingEscalation()
        self.escalations = self.escalation.escalations
        self.dispatcher = Dispatcher(
            store=self.store,
            rules=lambda: ruleset,
            executor=cast(Any, None),  # shadow mode never reaches the executor
            clock=self.clock,
            settings=DispatchSettings(StormGuard(1000, 60), dry_run=False, refusal_grace_s=0),
            escalation=self.escalation,
            decisions=self,
        )
        self.serial = 0

    def admission_decided(self, rule: str, decision: str, reason: str) -> None:
        self.decisions.append(decision)

    async def receive(self) -> NotificationReceipt:
        self.serial += 1
        body = json.dumps(alert_body(f"dd{self.serial:04d}")).encode()
        return await self.store.record_notification(parse(body), body, self.clock.now())


@pytest.fixture(params=["sqlite", "memory"])
async def harness(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    """Each test on SQLite and on the in-memory store written against the Protocols."""
    h = Harness(tmp_path, request.param)
    await h.store.open()
    yield h
    await h.store.close()


async def test_an_event_handed_over_and_read_from_the_queue_is_dispatched_once(harness: Harness) -> None:
    # at start the dispatcher reads the store's queue, which already holds what was handed over
    for _ in range(2):
        harness.dispatcher.submit((await harness.receive()).events)
    assert await harness.dispatcher.dispatch_pending() == 2
    # then hand-overs alone: nothing is read back
    harness.dispatcher.submit((await harness.receive()).events)
    assert await harness.dispatcher.dispatch_pending() == 1
    assert harness.decisions == ["shadow"] * 3
    assert await harness.store.undispatched_alert_events(100) == []


async def test_an_overflowing_hand_over_falls_back_to_the_queue(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert await harness.dispatcher.dispatch_pending() == 0  # the start-up read, of nothing
    monkeypatch.setattr(dispatcher_module, "_INBOX_LIMIT", 2)
    for _ in range(3):
        harness.dispatcher.submit((await harness.receive()).events)
    assert await harness.dispatcher.dispatch_pending() == 3
    assert harness.decisions == ["shadow"] * 3
    assert await harness.store.undispatched_alert_events(100) == []


async def test_a_lost_hand_over_is_found_by_the_idle_read(harness: Harness) -> None:
    assert await harness.dispatcher.dispatch_pending() == 0
    await harness.receive()  # committed, but its hand-over never comes (the caller went away)
    assert await harness.dispatcher.dispatch_pending() == 0
    harness.dispatcher.submit((await harness.receive()).events)
    assert await harness.dispatcher.dispatch_pending() == 1
    harness.dispatcher.idle()
    assert await harness.dispatcher.dispatch_pending() == 1
    assert harness.decisions == ["shadow"] * 2


async def test_a_failed_dispatch_leaves_the_alert_queued_and_retries_it_with_backoff(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store refusing to record a decision (another process held the write lock past the busy
    timeout) must not drop the acknowledged alert: it stays queued, is retried 1, 2, 4 ... s later,
    also by a dispatcher started after a restart, and the alerts behind it go on."""
    assert await harness.dispatcher.dispatch_pending() == 0
    real_create = harness.store.create_execution
    failing = {"on": True}

    async def create_execution(execution: Any, at: Any) -> None:
        if failing["on"] and execution.refusal != "dispatch_failed":
            raise StoreError("commit failed: database is locked")
        await real_create(execution, at)

    monkeypatch.setattr(harness.store, "create_execution", create_execution)
    stuck = await harness.receive()
    harness.dispatcher.submit(stuck.events)
    assert await harness.dispatcher.dispatch_pending() == 1
    assert harness.decisions == ["shadow"]  # decided, but not recorded
    assert [e.id for e in await harness.store.undispatched_alert_events(100)] == [stuck.events[0].id]
    assert harness.dispatcher.retrying == 1

    # not due yet: a pass does not retry it, and an alert behind it is dispatched meanwhile
    failing["on"] = False
    harness.dispatcher.submit((await harness.receive()).events)
    harness.dispatcher.idle()
    assert await harness.dispatcher.dispatch_pending() == 1
    assert [e.id for e in await harness.store.undispatched_alert_events(100)] == [stuck.events[0].id]

    harness.clock.advance(1.0)
    harness.dispatcher.idle()
    assert await harness.dispatcher.dispatch_pending() == 1
    assert await harness.store.undispatched_alert_events(100) == []
    assert harness.dispatcher.retrying == 0
    assert harness.escalations == []


async def test_a_dispatch_that_keeps_failing_is_escalated_once_and_survives_a_restart(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert await harness.dispatcher.dispatch_pending() == 0
    real_create = harness.store.create_execution

    async def create_execution(execution: Any, at: Any) -> None:
        if execution.refusal != "dispatch_failed":  # only the escalation's own record goes through
            raise StoreError("commit failed: disk I/O error")
        await real_create(execution, at)

    monkeypatch.setattr(harness.store, "create_execution", create_execution)
    stuck = await harness.receive()
    waits = []
    for _ in range(retries.ESCALATE_AFTER + 2):
        harness.dispatcher.idle()
        assert await harness.dispatcher.dispatch_pending() == 1
        waits.append(harness.dispatcher._idle_wait())
        harness.clock.advance(retries.RETRY_MAX_S)  # whatever the backoff, the next try is due
    assert waits[:4] == [1.0, 2.0, 4.0, dispatcher_module._IDLE_POLL_S]  # backoff; the idle read caps the wait
    [(execution_id, reason, severity)] = harness.escalations  # once, not once per try
    assert severity == "critical" and "dispatch failed 5 times" in reason and "disk I/O error" in reason
    record = await harness.store.get_execution(execution_id)
    assert record is not None and record.execution["refusal"] == "dispatch_failed"
    assert record.execution["rule"] == "watch" and record.execution["fingerprint"] == "dd0001"

    # a restart: the alert is still queued, and a new dispatcher dispatches it once the store works
    monkeypatch.setattr(harness.store, "create_execution", real_create)
    restarted = Harness(harness.store.path.parent)
    restarted.store = harness.store
    restarted.dispatcher._store = harness.store
    assert [e.id for e in await harness.store.undispatched_alert_events(100)] == [stuck.events[0].id]
    assert await restarted.dispatcher.dispatch_pending() == 1
    assert restarted.decisions == ["shadow"]
    assert await harness.store.undispatched_alert_events(100) == []
