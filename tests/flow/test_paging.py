"""Paging per incident: a refusal pages now, after its target's run, or not at all (service.flow.paging).

A real SQLite store and the real escalator (no channels: an escalation is its committed record), a
fake clock: what was paged is read back from the store, as the pages and reports show it.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import pytest
from support.fake_escalation import RecordingEscalation
from support.flow import QUICK_PLAYBOOK, alert_body, write_config

from service.alerts.webhook import parse
from service.clock import FakeClock
from service.escalation.escalator import Escalator, Policy
from service.flow.admission import StormGuard
from service.flow.dispatcher import Dispatcher, DispatchSettings
from service.flow.paging import Pager, Refusal
from service.metrics import create_metrics
from service.rules.loading import load_ruleset
from service.rules.ruleset import RuleSet
from service.settings import Secrets, Settings
from service.store import ExecutionState, NewExecution, SQLiteStore

GRACE_S = 60.0
WINDOW_S = 3600.0


class _NoRules:
    """A reload removed every rule: a waiting refusal pages with the defaults."""

    def get(self, name: str) -> None:
        return None


@dataclass
class Harness:
    store: SQLiteStore
    clock: FakeClock
    escalator: Escalator
    pager: Pager
    fingerprints: int = 0

    async def occurrence(self, status: str = "firing", fingerprint: str | None = None) -> int:
        if fingerprint is None:
            self.fingerprints += 1
            fingerprint = f"feed{self.fingerprints:012x}"
        body = json.dumps(alert_body(fingerprint, status=status)).encode()
        receipt = await self.store.record_notification(parse(body), body, self.clock.now())
        return receipt.events[0].occurrence.id

    async def execution(self, execution_id: str, state: str, target: str = "nats", refusal: str | None = None) -> int:
        occurrence_id = await self.occurrence()
        await self.store.create_execution(
            NewExecution(
                execution_id, "nats-down", "v1", "restart", "v1", target, occurrence_id, "fp", "NatsServerDown",
                "enforce", {}, state, reason=f"{refusal or state}: detail", refusal=refusal,
            ),
            self.clock.now(),
        )  # fmt: skip
        return occurrence_id

    async def refuse(
        self, execution_id: str, reason: str = "cooldown", target: str = "nats", started_at: datetime | None = None
    ) -> str:
        """A refusal of an alert that started at `started_at` (default: an hour ago, before any run here)."""
        await self.execution(execution_id, ExecutionState.REFUSED, target, reason)
        started_at = started_at or self.clock.now() - timedelta(hours=1)
        refusal = Refusal(
            execution_id, "nats-down", target, "NatsServerDown", reason, "detail", WINDOW_S, "critical", started_at
        )
        return await self.pager.refused(refusal)

    async def paged(self) -> list[str]:
        rows = await self.store.read(lambda conn: conn.execute("SELECT execution_id FROM escalations").fetchall())
        return sorted(row[0] for row in rows)

    async def notes(self, execution_id: str) -> list[str]:
        record = await self.store.get_execution(execution_id)
        assert record is not None
        return [e["message"] for e in record.events if e["kind"] == "page"]


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    store = SQLiteStore(tmp_path / "paging.db")
    await store.open()
    clock = FakeClock(datetime(2026, 12, 1, tzinfo=UTC))  # after the fixture alerts' startsAt
    escalator = Escalator(
        store, clock, Policy.from_settings(Settings(), Secrets(None, None, None), clock), create_metrics()
    )
    pager = Pager(
        store=store,
        clock=clock,
        escalation=escalator,
        rules=lambda: cast(RuleSet, _NoRules()),
        grace_s=GRACE_S,
        storm_window_s=600,
    )
    yield Harness(store, clock, escalator, pager)
    await store.close()


async def test_a_refusal_while_the_targets_run_runs_waits_and_pages_only_if_its_alert_still_fires(
    harness: Harness,
) -> None:
    await harness.execution("ex-run", ExecutionState.RUNNING)
    assert await harness.refuse("ex-still-firing") == "waiting"
    assert await harness.refuse("ex-resolves") == "waiting"
    assert await harness.paged() == []
    [shown] = [m for m in await harness.notes("ex-run") if "ex-still-firing" in m]
    assert "NatsServerDown refused while this run is running" in shown
    assert "no page now: run ex-run for nats is running" in (await harness.notes("ex-still-firing"))[0]

    # the run verifies its fix; one refused alert resolves with it, the other keeps firing
    harness.clock.advance(10)
    await harness.store.set_state("ex-run", ExecutionState.SUCCEEDED, harness.clock.now(), "verified")
    record = await harness.store.get_execution("ex-resolves")
    assert record is not None and record.occurrence is not None
    fingerprint = record.occurrence["fingerprint"]
    body = alert_body(fingerprint, status="resolved")
    raw = json.dumps(body).encode()
    await harness.store.record_notification(parse(raw), raw, harness.clock.now())

    # due (grace after the refusal) while the fix is fresh: it waits for grace after the fix
    harness.clock.advance(GRACE_S - 10)
    assert await harness.pager.page_due() == 2
    assert await harness.paged() == []
    assert "no page: the alert resolved while its target was in hand" in await harness.notes("ex-resolves")
    harness.clock.advance(10)
    assert await harness.pager.page_due() == 1
    assert await harness.paged() == ["ex-still-firing"]
    assert await harness.pager.page_due() == 0  # nothing waits any more


async def test_an_outage_that_started_after_the_fix_was_verified_is_not_held_back(harness: Harness) -> None:
    await harness.execution("ex-run", ExecutionState.RUNNING)
    harness.clock.advance(5)
    await harness.store.set_state("ex-run", ExecutionState.SUCCEEDED, harness.clock.now(), "verified")
    harness.clock.advance(5)
    # NATS went down again 2s after the fix: the cooldown refuses, and a person must act now
    assert await harness.refuse("ex-again", started_at=harness.clock.now() - timedelta(seconds=3)) == "paged"
    # an alert of the outage that run fixed (it started before the fix) still waits for it
    assert await harness.refuse("ex-same", target="nats", started_at=harness.clock.now() - timedelta(seconds=60)) in (
        "waiting",
    )
    assert await harness.paged() == ["ex-again"]


async def test_refusals_page_once_per_rule_target_and_window(harness: Harness) -> None:
    assert await harness.refuse("ex-1", "cooldown") == "paged"
    await harness.escalator.acknowledge("ex-1", "alice")  # the page is closed, the window is not over
    assert await harness.refuse("ex-2", "busy") == "quiet"
    assert await harness.refuse("ex-3", "budget_spent") == "quiet"
    assert "paged within the rule's window (3600s): execution ex-1" in (await harness.notes("ex-3"))[0]
    assert await harness.refuse("ex-other", "cooldown", target="router-2") == "paged"  # another target
    harness.clock.advance(WINDOW_S + 1)
    assert await harness.refuse("ex-4", "cooldown") == "paged"  # a new window
    assert await harness.paged() == ["ex-1", "ex-4", "ex-other"]


async def test_a_refusal_adds_to_an_open_page_about_its_target(harness: Harness) -> None:
    await harness.execution("ex-failed", ExecutionState.FAILED)
    await harness.escalator.escalate("ex-failed", "verification failed", "critical")
    assert await harness.refuse("ex-refused") == "quiet"
    assert await harness.paged() == ["ex-failed"]
    assert any("also refused: NatsServerDown" in m for m in await harness.notes("ex-failed"))
    assert "no page: execution ex-failed's page about nats is open" in await harness.notes("ex-refused")


async def test_a_storm_pages_once_whatever_its_targets(harness: Harness) -> None:
    await harness.execution("ex-run", ExecutionState.RUNNING)  # a run does not hold back a storm page
    outcomes = [await harness.refuse(f"ex-storm-{n}", "storm", target=f"node-{n}") for n in range(4)]
    assert outcomes == ["paged", "quiet", "quiet", "quiet"]
    assert await harness.paged() == ["ex-storm-0"]


def test_refusal_grace_is_a_setting_with_a_safe_default() -> None:
    assert Settings().escalation.refusal_grace == 300
    settings = Settings.model_validate({"escalation": {"refusal_grace": "90s"}})
    assert settings.escalation.refusal_grace == 90


COOLDOWN_RULES = """
rules:
  - name: nats-down
    match: ['alertname="NatsJetStreamUnhealthy"']
    playbook: quick
    params: {node: "{{ labels.instance }}"}
    target: nats
    limits: {cooldown: 1h, max_runs: 5, window: 2h}
    escalate_on_refusal: true
"""


async def test_a_refused_occurrence_sent_again_is_a_repeat_and_a_paused_one_is_decided_again(tmp_path: Path) -> None:
    config = write_config(tmp_path, COOLDOWN_RULES, {"quick": QUICK_PLAYBOOK})
    ruleset = load_ruleset(config["rules"], config["playbooks"], tmp_path)
    store = SQLiteStore(tmp_path / "dispatch.db")
    await store.open()
    clock, escalation, decisions = FakeClock(), RecordingEscalation(), _Decisions()
    dispatcher = Dispatcher(
        store=store,
        rules=lambda: ruleset,
        executor=cast(Any, None),  # every decision here is a refusal: nothing runs
        clock=clock,
        settings=DispatchSettings(StormGuard(1000, 60), dry_run=False, refusal_grace_s=0),
        escalation=escalation,
        decisions=decisions,
    )

    async def deliver(fingerprint: str) -> None:
        body = json.dumps(alert_body(fingerprint)).encode()
        dispatcher.submit((await store.record_notification(parse(body), body, clock.now())).events)
        await dispatcher.dispatch_pending()

    try:
        # NATS was restarted 10 minutes ago: the cooldown refuses, once, and pages once
        other = await _occurrence(store, clock, "aaaa00000000000f")
        await store.create_execution(
            NewExecution("ex-fix", "nats-down", "v1", "quick", "v1", "nats", other, "fp", "A", "enforce", {}, "queued"),
            clock.now() - timedelta(minutes=11),
        )
        await store.set_state("ex-fix", ExecutionState.SUCCEEDED, clock.now() - timedelta(minutes=10), "verified")
        await dispatcher.dispatch_pending()  # that alert's own event: a repeat of the run it made
        decisions.seen.clear()
        for _ in range(3):  # Alertmanager's repeat_interval, an HA replica, a 5xx retry
            await deliver("bbbb000000000001")
        assert decisions.seen == [("refuse", "cooldown"), ("repeat", "duplicate"), ("repeat", "duplicate")]
        assert len(escalation.escalations) == 1
        # paused: nothing was decided about the alert, so a re-send after the pause is decided again
        pause = await store.add_pause("*", "*", "disk swap", "bob", clock.now(), None)
        await deliver("cccc000000000001")
        await deliver("cccc000000000001")
        await store.clear_pause(pause, clock.now())
        await deliver("cccc000000000001")
        assert decisions.seen[3:] == [("refuse", "paused"), ("refuse", "paused"), ("refuse", "cooldown")]
    finally:
        await store.close()


class _Decisions:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def admission_decided(self, rule: str, decision: str, reason: str) -> None:
        self.seen.append((decision, reason))


async def _occurrence(store: SQLiteStore, clock: FakeClock, fingerprint: str) -> int:
    body = json.dumps(alert_body(fingerprint)).encode()
    return (await store.record_notification(parse(body), body, clock.now())).events[0].occurrence.id
