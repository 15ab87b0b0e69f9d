"""The dispatcher: committed alerts -> rule matches -> admission -> executor.

The intake hands it each committed notification's alert events in memory, so under load nothing is
read back. The store's queue of undispatched events stays the source of truth: the dispatcher reads
it at start (an alert acknowledged just before a crash is dispatched after the restart), after a
failed pass, when the hand-over overflowed, and when idle (an event whose hand-over was lost). It
never runs on the request path: the webhook answer does not wait for any of this.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from service import admission
from service.clock import Clock
from service.executor import Executor, RunRequest
from service.rules import Alert, NotificationContext, RuleMatch, RuleSet
from service.store import ACTIVE_STATES, AlertEvent, ExecutionRecord, NewExecution, SQLiteStore

log = logging.getLogger("remediator.dispatcher")

_BATCH = 200
_MARK_CHUNK = 20
_IDLE_POLL_S = 5.0  # an event whose hand-over was lost waits at most this long
_INBOX_LIMIT = 10_000  # past this, drop the hand-over and read the store's queue instead


def new_execution_id(clock: Clock) -> str:
    """Sortable by creation time, unique without coordination: ms timestamp + 48 random bits."""
    return f"ex-{int(clock.now().timestamp() * 1000):012x}-{secrets.token_hex(6)}"


@dataclass(frozen=True)
class DispatchSettings:
    storm: admission.StormGuard
    dry_run: bool


class Dispatcher:
    def __init__(
        self,
        store: SQLiteStore,
        rules: Callable[[], RuleSet],
        executor: Executor,
        clock: Clock,
        settings: DispatchSettings,
        on_decision: Callable[[str, str, str], None],
        escalate: Callable[[str, str, str], Awaitable[None]],
        on_resolved: Callable[[int], Awaitable[object]],
        silenced_by: Callable[[Mapping[str, str]], str | None] = lambda _labels: None,
    ) -> None:
        self._store = store
        self._rules = rules
        self._executor = executor
        self._clock = clock
        self._settings = settings
        self._on_decision = on_decision
        self._escalate = escalate
        self._on_resolved = on_resolved  # closes the escalations of the resolved alert's runs
        self._silenced_by = silenced_by  # the Alertmanager silence pausing automation for these labels
        self._wake = asyncio.Event()
        self._inbox: list[AlertEvent] = []
        self._rescan = True  # read the store's queue on the next pass
        # The ids the last read of the store's queue returned: the same events may also be handed
        # over, since a hand-over follows its commit, and must not be dispatched twice.
        self._scanned: set[int] = set()

    async def recover(self) -> None:
        """Runs left active by a crash: resume those whose playbook declares its steps idempotent
        (and has not changed since), mark the others `interrupted` and escalate them."""
        for execution_id in await self._store.executions_in_state(ACTIVE_STATES):
            record = await self._store.get_execution(execution_id)
            assert record is not None
            request = self._resumable(record)
            now = self._clock.now()
            if request is not None:
                await self._store.add_event(execution_id, now, "resume", "resumed after a restart")
                await self._store.set_state(execution_id, "queued", now, "resumed after a restart")
                self._executor.start(request, queued=False)
                log.warning("execution resumed after a restart", extra={"execution_id": execution_id})
                continue
            reason = (
                "the remediator stopped while this execution was active; steps after the last recorded one did not run"
            )
            await self._store.set_state(execution_id, "interrupted", now, reason)
            await self._escalate(execution_id, f"interrupted: {reason}", "critical")
            log.warning("execution interrupted by a restart", extra={"execution_id": execution_id})

    def _resumable(self, record: ExecutionRecord) -> RunRequest | None:
        execution, occurrence = record.execution, record.occurrence
        playbook = self._rules().playbooks.get(execution["playbook"])
        rule = self._rules().get(execution["rule"])
        if playbook is None or rule is None or occurrence is None:
            return None
        # resume what never started, or what the playbook promised is safe to repeat; and only with
        # the playbook version the run was admitted with
        never_started = execution["started_at"] is None and not record.steps
        if not (never_started or playbook.playbook.idempotent) or playbook.version != execution["playbook_version"]:
            return None
        return RunRequest(
            execution_id=execution["id"],
            rule=execution["rule"],
            playbook=playbook,
            params=execution["params"],
            target=execution["target"],
            occurrence_id=occurrence["id"],
            fingerprint=execution["fingerprint"],
            labels=occurrence["labels"],
            annotations=occurrence["annotations"],
            generator_url=occurrence["generator_url"],
            severity=rule.rule.severity,
        )

    def wants(self, status: str, labels: Mapping[str, str]) -> bool:
        """Whether dispatching an alert could do anything beyond a firing -> resolved transition
        (which the store sees): some rule matches it. The intake asks before storing, so an alert no
        rule wants is stored as dispatched and never queued."""
        return self._rules().wants(status, labels)

    def submit(self, events: Sequence[AlertEvent]) -> None:
        """Hand over a committed notification's events (called by the intake after its commit)."""
        if not events:
            return
        if len(self._inbox) + len(events) > _INBOX_LIMIT:
            self._inbox.clear()
            self._rescan = True
        else:
            self._inbox.extend(events)
        self._wake.set()

    async def run(self) -> None:
        while True:
            self._wake.clear()
            try:
                await self.dispatch_pending()
            except Exception:  # the store failing now must not stop dispatch for good: retry later
                log.exception("dispatch pass failed; retrying")
                self._rescan = True
            try:
                await asyncio.wait_for(self._wake.wait(), _IDLE_POLL_S)
            except TimeoutError:
                self.idle()

    def idle(self) -> None:
        """Nothing was handed over for a while: read the store's queue on the next pass, for an
        event whose hand-over was lost (its request went away between commit and hand-over)."""
        self._rescan = True

    async def dispatch_pending(self) -> int:
        """Dispatch what was handed over, or every undispatched event when the store's queue is
        due a read; oldest first; returns how many."""
        total = 0
        if self._rescan:
            self._rescan = False
            self._scanned = set()
            while events := await self._store.undispatched_alert_events(_BATCH):
                self._scanned.update(event.id for event in events)
                await self._dispatch_all(events)
                total += len(events)
        while self._inbox:
            events = sorted(
                (event for event in self._inbox if event.id not in self._scanned), key=lambda event: event.id
            )
            self._inbox = []
            await self._dispatch_all(events)
            total += len(events)
        return total

    async def _dispatch_all(self, events: Sequence[AlertEvent]) -> None:
        done: list[int] = []
        for event in events:
            try:
                await self._dispatch(event)
            except Exception:
                log.exception("dispatch failed", extra={"fingerprint": event.occurrence.fingerprint})
            done.append(event.id)
            # Marked in small chunks: a crash replays at most a chunk, and a replay is harmless
            # (dedup turns a replayed alert into a repeat of the run it already made).
            if len(done) == _MARK_CHUNK:
                await self._store.mark_dispatched(done, self._clock.now())
                done = []
        if done:
            await self._store.mark_dispatched(done, self._clock.now())

    async def _dispatch(self, event: AlertEvent) -> None:
        occurrence = event.occurrence
        alert = Alert(
            labels=occurrence.labels,
            annotations=occurrence.annotations,
            status="resolved" if event.status == "resolved" else "firing",
            fingerprint=occurrence.fingerprint,
            starts_at=occurrence.starts_at,
            generator_url=occurrence.generator_url,
        )
        if event.status == "resolved" and event.previous_status == "firing":
            await self._resolved(occurrence.id)
        ruleset = self._rules()
        context = NotificationContext(external_url=event.external_url, common_labels=event.common_labels)
        for match in ruleset.match(alert, context):
            await self._decide(match, event)

    async def _resolved(self, occurrence_id: int) -> None:
        """The alert resolved: cancel its queued runs, and running ones whose playbook says so."""
        for execution_id, state, _playbook in await self._store.active_for_occurrence(occurrence_id):
            if state == "queued" or self._executor.on_resolved(execution_id) == "cancel":
                if self._executor.cancel(execution_id):
                    await self._store.add_event(
                        execution_id, self._clock.now(), "resolved", "alert resolved: cancelled"
                    )
        await self._on_resolved(occurrence_id)

    async def _first_of_its_kind(self, match: RuleMatch, verdict: admission.Verdict, now: datetime) -> bool:
        """Escalate a tripped budget once per window for its target, and a storm once per storm:
        the person needs to know it happened, not once per alert that hit it."""
        limits = match.rule.rule.limits
        if verdict.reason == "budget_spent":
            since = now - timedelta(seconds=limits.window)
            return await self._store.count_refusals(match.rule.name, match.target, "budget_spent", since, 2) <= 1
        if verdict.reason == "storm":
            since = now - timedelta(seconds=self._settings.storm.window_seconds)
            return await self._store.count_refusals(None, None, "storm", since, 2) <= 1
        return True

    async def _decide(self, match: RuleMatch, event: AlertEvent) -> None:
        occurrence = event.occurrence
        rule = match.rule.rule
        now = self._clock.now()
        if not match.ok:
            verdict = admission.Verdict("refuse", "bad_params", match.error or "render failed")
        else:
            verdict = await admission.decide(
                self._store,
                match,
                occurrence.id,
                now,
                self._settings.storm,
                self._settings.dry_run,
                self._silenced_by(occurrence.labels),
            )
        self._on_decision(rule.name, verdict.decision, verdict.reason)
        fields = {
            "rule": rule.name,
            "fingerprint": occurrence.fingerprint,
            "decision": verdict.decision,
            "reason": verdict.reason,
            "target": match.target,
        }
        if verdict.decision == "repeat":
            assert verdict.existing_execution is not None
            await self._store.add_event(
                verdict.existing_execution,
                now,
                "repeat",
                f"alert delivered again ({occurrence.receive_count} deliveries)",
            )
            log.info("repeat", extra=fields)
            return
        state = {"run": "queued", "queue": "queued", "refuse": "refused", "shadow": "skipped"}[verdict.decision]
        execution_id = new_execution_id(self._clock)
        await self._store.create_execution(
            NewExecution(
                id=execution_id,
                rule=rule.name,
                rule_version=match.rule_version,
                playbook=match.playbook,
                playbook_version=match.playbook_version,
                target=match.target,
                occurrence_id=occurrence.id,
                fingerprint=occurrence.fingerprint,
                alertname=occurrence.alertname,
                mode="dry_run" if self._settings.dry_run else rule.mode,
                params=dict(match.params),
                state=state,
                reason=verdict.detail,
                refusal=verdict.reason if verdict.decision == "refuse" else None,
            ),
            now,
        )
        log.info("admission", extra={**fields, "execution_id": execution_id})
        if verdict.decision == "refuse":
            # a storm is escalated whatever the rule says: it is about all rules, not this one
            wanted = rule.escalate_on_refusal or verdict.reason == "storm"
            if wanted and await self._first_of_its_kind(match, verdict, now):
                await self._escalate(execution_id, f"refused: {verdict.detail}", rule.severity)
            return
        if verdict.decision == "shadow":
            return
        if verdict.reason == "restart":
            for active in await self._store.active_for_target(rule.name, match.target):
                if active != execution_id and self._executor.cancel(active):
                    await self._store.add_event(active, now, "restart", f"cancelled: superseded by {execution_id}")
        playbook = self._rules().playbooks[match.playbook]
        self._executor.start(
            RunRequest(
                execution_id=execution_id,
                rule=rule.name,
                playbook=playbook,
                params=match.params,
                target=match.target,
                occurrence_id=occurrence.id,
                fingerprint=occurrence.fingerprint,
                labels=occurrence.labels,
                annotations=occurrence.annotations,
                generator_url=occurrence.generator_url,
                severity=rule.severity,
            ),
            # in queued mode every run of the target takes its turn, the first one included
            queued=rule.limits.concurrency == "queued",
        )
