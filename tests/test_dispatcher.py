"""The dispatcher's two inputs, the intake's hand-over and the store's queue: each event once."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import pytest
from flow_helpers import QUICK_PLAYBOOK, alert_body, write_config

from service import dispatcher as dispatcher_module
from service.admission import StormGuard
from service.clock import FakeClock
from service.dispatcher import Dispatcher, DispatchSettings
from service.rules import load_ruleset
from service.store import NotificationReceipt, SQLiteStore
from service.webhook import parse

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


class Harness:
    def __init__(self, root: Path) -> None:
        config = write_config(root, SHADOW_RULES, {"quick": QUICK_PLAYBOOK})
        ruleset = load_ruleset(config["rules"], config["playbooks"], root)
        self.clock = FakeClock()
        self.store = SQLiteStore(root / "dispatch.db")
        self.decisions: list[str] = []

        async def escalate(*_args: object) -> None:
            return None

        async def resolved(_occurrence_id: int) -> None:
            return None

        self.dispatcher = Dispatcher(
            self.store,
            lambda: ruleset,
            cast(Any, None),  # shadow mode never reaches the executor
            self.clock,
            DispatchSettings(StormGuard(1000, 60), dry_run=False),
            lambda _rule, decision, _reason: self.decisions.append(decision),
            escalate,
            resolved,
        )
        self.serial = 0

    async def receive(self) -> NotificationReceipt:
        self.serial += 1
        body = json.dumps(alert_body(f"dd{self.serial:04d}")).encode()
        return await self.store.record_notification(parse(body), body, self.clock.now())


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    h = Harness(tmp_path)
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
