"""Admission with an injected clock: every limit and mode at its boundaries, and across a restart."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any, Protocol

import pytest
from support.flow import alert_body, write_config
from support.memory_store import MemoryStore

from service.alerts.webhook import parse
from service.clock import FakeClock
from service.flow.admission import StormGuard, Verdict, decide
from service.rules.loading import load_ruleset
from service.rules.ruleset import Alert, RuleMatch, RuleSet
from service.store import DispatchStore, IntakeStore, NewExecution, SQLiteStore

PLAYBOOK = """
name: noop
params:
  node: {type: str}
steps:
  - type: wait
    seconds: 1
"""


def rules_with(limits: str, mode: str = "enforce") -> str:
    return f"""
rules:
  - name: r
    match: ['alertname="NatsJetStreamUnhealthy"']
    playbook: noop
    params: {{node: "{{{{ labels.instance }}}}"}}
    mode: {mode}
    limits: {limits}
"""


class AdmissionTestStore(IntakeStore, DispatchStore, Protocol):
    async def open(self) -> None: ...
    async def close(self) -> None: ...


def new_store(kind: str, path: Path) -> AdmissionTestStore:
    return SQLiteStore(path) if kind == "sqlite" else MemoryStore(path)


class Harness:
    def __init__(self, root: Path, ruleset: RuleSet, store_kind: str) -> None:
        self.root = root
        self.ruleset = ruleset
        self.clock = FakeClock()
        self.store_kind = store_kind
        self.store = new_store(store_kind, root / "admission.db")
        self.storm = StormGuard(max_admissions=1000, window_seconds=60)
        self.serial = 0

    async def occurrence(self, fingerprint: str) -> int:
        body = json.dumps(alert_body(fingerprint)).encode()
        await self.store.record_notification(parse(body), body, self.clock.now())
        events = await self.store.undispatched_alert_events(1000)
        return next(e.occurrence.id for e in events if e.occurrence.fingerprint == fingerprint)

    def match(self, instance: str = "node-1") -> RuleMatch:
        [m] = self.ruleset.match(Alert(labels={"alertname": "NatsJetStreamUnhealthy", "instance": instance}))
        return m

    async def decide(self, occurrence_id: int, instance: str = "node-1") -> Verdict:
        return await decide(self.store, self.match(instance), occurrence_id, self.clock.now(), self.storm, False)

    async def run(self, occurrence_id: int, state: str = "succeeded", instance: str = "node-1") -> str:
        """Record an execution as the dispatcher would, ending in `state`."""
        self.serial += 1
        execution_id = f"ex-{self.serial}"
        match = self.match(instance)
        prior = await self.store.execution_for_occurrence("r", occurrence_id)
        await self.store.create_execution(
            NewExecution(
                execution_id,
                "r",
                match.rule_version,
                "noop",
                match.playbook_version,
                match.target,
                occurrence_id,
                "fp",
                "NatsJetStreamUnhealthy",
                "enforce",
                {},
                "queued",
                occurrence_run=1 if prior is None else prior.occurrence_run + 1,
            ),
            self.clock.now(),
        )
        if state != "queued":
            await self.store.set_state(execution_id, state, self.clock.now())
        return execution_id


@pytest.fixture(params=["sqlite", "memory"])
async def harness(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    """Each test on SQLite and on the in-memory store written against the Protocols."""
    made: list[Harness] = []

    async def make(limits: str, mode: str = "enforce") -> Harness:
        config = write_config(tmp_path, rules_with(limits, mode), {"noop": PLAYBOOK})
        ruleset = load_ruleset(config["rules"], config["playbooks"], tmp_path)
        h = Harness(tmp_path, ruleset, request.param)
        await h.store.open()
        made.append(h)
        return h

    yield make
    for h in made:
        await h.store.close()


async def test_same_occurrence_is_a_repeat(harness: Any) -> None:
    h = await harness("{cooldown: 0}")
    occ = await h.occurrence("aaaa000000000001")
    assert (await h.decide(occ)).decision == "run"
    first = await h.run(occ)
    verdict = await h.decide(occ)
    assert (verdict.decision, verdict.existing_execution) == ("repeat", first)


async def test_cooldown_boundary(harness: Any) -> None:
    h = await harness("{cooldown: 300, max_runs: 100, window: 1h}")
    await h.run(await h.occurrence("aaaa000000000001"))
    nxt = await h.occurrence("aaaa000000000002")
    h.clock.advance(299.999)
    verdict = await h.decide(nxt)
    assert (verdict.decision, verdict.reason) == ("refuse", "cooldown")
    h.clock.advance(0.001)  # exactly at the cooldown's end: allowed
    assert (await h.decide(nxt)).decision == "run"


async def test_budget_nth_run_allowed_n_plus_first_refused_until_window_passes(harness: Any) -> None:
    h = await harness("{cooldown: 0, max_runs: 3, window: 1h}")
    for n in range(3):
        occ = await h.occurrence(f"aaaa00000000000{n}")
        assert (await h.decide(occ)).decision == "run", n
        await h.run(occ)
        h.clock.advance(60)
    fourth = await h.occurrence("aaaa000000000009")
    verdict = await h.decide(fourth)
    assert (verdict.decision, verdict.reason) == ("refuse", "budget_spent")
    # another target has its own budget
    assert (await h.decide(fourth, instance="node-2")).decision == "run"
    # the first run leaves the window 1h after it started: the budget frees one run
    h.clock.advance(3600 - 180)
    assert (await h.decide(fourth)).decision == "run"


async def test_single_mode_refuses_while_one_runs(harness: Any) -> None:
    h = await harness("{cooldown: 0, concurrency: single}")
    first = await h.run(await h.occurrence("aaaa000000000001"), state="running")
    other = await h.occurrence("aaaa000000000002")
    verdict = await h.decide(other)
    assert (verdict.decision, verdict.reason) == ("refuse", "busy")
    await h.store.set_state(first, "succeeded", h.clock.now())
    assert (await h.decide(other)).decision == "run"


async def test_parallel_mode_allows_up_to_max(harness: Any) -> None:
    h = await harness("{cooldown: 0, max_runs: 100, concurrency: parallel, max_parallel: 2}")
    await h.run(await h.occurrence("aaaa000000000001"), state="running")
    second = await h.occurrence("aaaa000000000002")
    assert (await h.decide(second)).decision == "run"
    await h.run(second, state="running")
    verdict = await h.decide(await h.occurrence("aaaa000000000003"))
    assert (verdict.decision, verdict.reason) == ("refuse", "busy")


async def test_queued_mode_queues_up_to_max_queue(harness: Any) -> None:
    h = await harness("{cooldown: 0, max_runs: 100, concurrency: queued, max_queue: 1}")
    await h.run(await h.occurrence("aaaa000000000001"), state="running")
    second = await h.occurrence("aaaa000000000002")
    assert (await h.decide(second)).decision == "queue"
    await h.run(second, state="queued")
    verdict = await h.decide(await h.occurrence("aaaa000000000003"))
    assert (verdict.decision, verdict.reason) == ("refuse", "queue_full")


async def test_storm_guard_holds_at_n_and_clears_when_the_rate_drops(harness: Any) -> None:
    h = await harness("{cooldown: 0, max_runs: 1000, concurrency: parallel, max_parallel: 1000}")
    h.storm = StormGuard(max_admissions=5, window_seconds=10)
    for n in range(5):
        occ = await h.occurrence(f"bbbb00000000000{n}")
        assert (await h.decide(occ, instance=f"n{n}")).decision == "run"
        await h.run(occ, instance=f"n{n}")
    held = await h.occurrence("bbbb000000000009")
    verdict = await h.decide(held, instance="n9")
    assert (verdict.decision, verdict.reason) == ("refuse", "storm")
    h.clock.advance(10)
    assert (await h.decide(held, instance="n9")).decision == "run"


async def test_shadow_mode_runs_nothing(harness: Any) -> None:
    h = await harness("{cooldown: 0}", mode="shadow")
    verdict = await h.decide(await h.occurrence("aaaa000000000001"))
    assert verdict.decision == "shadow"


async def test_limits_hold_across_a_restart(harness: Any, tmp_path: Path) -> None:
    h = await harness("{cooldown: 600, max_runs: 5, window: 1h}")
    await h.run(await h.occurrence("aaaa000000000001"))
    nxt = await h.occurrence("aaaa000000000002")
    await h.store.close()
    if h.store_kind == "sqlite":
        h.store = SQLiteStore(tmp_path / "admission.db")  # a new process would open the same file
    await h.store.open()
    h.clock.advance(60)
    assert (await h.decide(nxt)).reason == "cooldown"
    h.clock.advance(timedelta(minutes=9).total_seconds())
    assert (await h.decide(nxt)).decision == "run"


async def test_rerun_after_tries_a_still_firing_alert_again_once_the_run_finished(harness: Any) -> None:
    h = await harness("{cooldown: 0, max_runs: 5, rerun_after: 10m}")
    occ = await h.occurrence("aaaa000000000001")
    first = await h.run(occ, state="running")
    h.clock.advance(3600)
    assert (await h.decide(occ)).decision == "repeat"  # still running: never twice at once
    await h.store.set_state(first, "failed", h.clock.now())
    second = await h.run(occ, state="failed")
    h.clock.advance(599)
    assert (await h.decide(occ)).existing_execution == second
    h.clock.advance(1)
    assert (await h.decide(occ)).decision == "run"
