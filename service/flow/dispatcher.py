"""The dispatcher: committed alerts -> rule matches -> admission -> executor.

The intake hands it each committed notification's alert events in memory, so under load nothing is
read back. The store's queue of undispatched events stays the source of truth: the dispatcher reads
it at start (an alert acknowledged just before a crash is dispatched after the restart), after a
failed pass, when the hand-over overflowed, and when idle (an event whose hand-over was lost). It
never runs on the request path: the webhook answer does not wait for any of this.

An event whose dispatch fails stays queued and is retried (service.flow.retries); start-up recovery
of the runs a crash left active is service.flow.recovery; what each concurrency mode does is
service.flow.modes.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from service.clock import Clock
from service.flow import admission, modes, recovery
from service.flow.executor import Executor, RunRequest
from service.flow.paging import Pager, Refusal
from service.flow.ports import DecisionObserver, Escalation, PauseSource
from service.flow.retries import Retries
from service.rules.ruleset import Alert, NotificationContext, RuleMatch, RuleSet
from service.store import AlertEvent, DispatchStore, DuplicateExecution, ExecutionState, NewExecution

log = logging.getLogger("remediator.dispatcher")

_BATCH = 200
_MARK_CHUNK = 20
_IDLE_POLL_S = 5.0  # an event whose hand-over was lost waits at most this long
_INBOX_LIMIT = 10_000  # past this, drop the hand-over and read the store's queue instead
_MIN_WAIT_S = 0.05  # the shortest wait for a retry that is (about) due


# The state an execution is recorded in for each decision but a repeat (which records none).
_STATE_OF = {
    "run": ExecutionState.QUEUED,
    "queue": ExecutionState.QUEUED,
    "refuse": ExecutionState.REFUSED,
    "shadow": ExecutionState.SKIPPED,
}


def new_execution_id(clock: Clock) -> str:
    """Sortable by creation time, unique without coordination: ms timestamp + 48 random bits."""
    return f"ex-{int(clock.now().timestamp() * 1000):012x}-{secrets.token_hex(6)}"


# Refusals that decide nothing about the alert: a re-send of their occurrence is decided again (a
# pause may have been lifted, a host added to the inventory; a dispatch that failed is retried),
# where any other refusal is final for its occurrence and a re-send of it is a repeat.
_UNDECIDED = frozenset({"paused", "unknown_host", "dispatch_failed"})


@dataclass(frozen=True)
class DispatchSettings:
    storm: admission.StormGuard
    dry_run: bool
    refusal_grace_s: float  # service.flow.paging; its default is the setting's (escalation.refusal_grace)


class Dispatcher:
    def __init__(
        self,
        *,
        store: DispatchStore,
        rules: Callable[[], RuleSet],
        executor: Executor,
        clock: Clock,
        settings: DispatchSettings,
        escalation: Escalation,
        decisions: DecisionObserver,
        pauses: PauseSource | None = None,
    ) -> None:
        self._store = store
        self._rules = rules  # the rules in force now (a reload replaces them)
        self._executor = executor
        self._clock = clock
        self._settings = settings
        self._escalation = escalation
        self._decisions = decisions
        self._pauses = pauses  # e.g. the Alertmanager silences pausing automation for some labels
        self._pager = Pager(
            store=store,
            clock=clock,
            escalation=escalation,
            rules=rules,
            grace_s=settings.refusal_grace_s,
            storm_window_s=settings.storm.window_seconds,
        )
        self._wake = asyncio.Event()
        self._inbox: list[AlertEvent] = []
        self._rescan = True  # read the store's queue on the next pass
        # The ids the last read of the store's queue returned: the same events may also be handed
        # over, since a hand-over follows its commit, and must not be dispatched twice.
        self._scanned: set[int] = set()
        self._retries = Retries()  # the events stay undispatched in the store meanwhile

    async def recover(self) -> None:
        """Runs left active by a crash: resumed or interrupted (service.flow.recovery)."""
        await recovery.recover(self._store, self._rules, self._executor, self._clock, self._escalation)

    def wants(self, status: str, labels: Mapping[str, str]) -> bool:
        """Whether dispatching an alert could do anything beyond a firing -> resolved transition
        (which the store sees): some rule matches it. The intake asks before storing, so an alert no
        rule wants is stored as dispatched and never queued (the intake logs and counts it as unmatched,
        and the index page lists it)."""
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
                await asyncio.wait_for(self._wake.wait(), self._idle_wait())
            except TimeoutError:
                self.idle()

    def _idle_wait(self) -> float:
        """Seconds to wait for a hand-over before reading the queue: sooner when a retry is due."""
        due = self._retries.next_due()
        if due is None:
            return _IDLE_POLL_S
        return max(_MIN_WAIT_S, min(_IDLE_POLL_S, (due - self._clock.now()).total_seconds()))

    async def page_due(self) -> int:
        """Refusals whose page waited for their target's run: paged now if their alert still fires
        (service.flow.paging); called every few seconds."""
        return await self._pager.page_due()

    @property
    def retrying(self) -> int:
        """Events whose dispatch failed and that wait for their next try."""
        return len(self._retries)

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
            after = 0  # events that failed stay in the queue: read on past them, not again
            while events := await self._store.undispatched_alert_events(_BATCH, after):
                after = events[-1].id
                self._scanned.update(event.id for event in events)
                total += await self._dispatch_all(events)
        while self._inbox:
            events = sorted(
                (event for event in self._inbox if event.id not in self._scanned), key=lambda event: event.id
            )
            self._inbox = []
            total += await self._dispatch_all(events)
        return total

    async def _dispatch_all(self, events: Sequence[AlertEvent]) -> int:
        """Dispatch the events not waiting out a retry; mark those that went through; returns how many."""
        done: list[int] = []
        dispatched = 0
        for event in events:
            if self._retries.waiting(event.id, self._clock.now()):
                continue
            dispatched += 1
            try:
                await self._dispatch(event, retrying=self._retries.get(event.id) is not None)
            except Exception as exc:
                # Not marked: the event stays in the store's queue (also across a restart) until a
                # dispatch of it goes through.
                await self._failed(event, exc)
                continue
            self._retries.succeeded(event.id)
            done.append(event.id)
            # Marked in small chunks: a crash replays at most a chunk, and a replay is harmless
            # (dedup turns a replayed alert into a repeat of the run it already made).
            if len(done) == _MARK_CHUNK:
                await self._store.mark_dispatched(done, self._clock.now())
                done = []
        if done:
            await self._store.mark_dispatched(done, self._clock.now())
        return dispatched

    async def _failed(self, event: AlertEvent, exc: Exception) -> None:
        retry = self._retries.failed(event.id, self._clock.now())
        log.error(
            "dispatch failed; the alert stays queued and is tried again",
            exc_info=exc,
            extra={
                "fingerprint": event.occurrence.fingerprint,
                "attempts": retry.attempts,
                "retry_in_s": retry.delay_s,
            },
        )
        if retry.to_escalate:
            try:
                await self._escalate_stuck(event, retry.attempts, exc)
            except Exception:  # the store is likely what fails: the log and the next tries remain
                log.exception(
                    "could not escalate a failing dispatch", extra={"fingerprint": event.occurrence.fingerprint}
                )
            else:
                retry.escalated = True

    async def _escalate_stuck(self, event: AlertEvent, attempts: int, exc: Exception) -> None:
        """Tell a person that an acknowledged alert cannot be acted on: a refused execution (so it
        shows in the pages and reports) for the first rule it matches, escalated critical. An alert
        no rule matches any more (a reload) has nothing to act on: its next try just succeeds."""
        match = next(iter(self._matches(event)), None)
        if match is None:
            return
        detail = f"dispatch failed {attempts} times ({type(exc).__name__}: {exc}); still retrying"
        verdict = admission.Verdict("refuse", "dispatch_failed", detail)
        execution_id = new_execution_id(self._clock)
        await self._create(execution_id, match, event, verdict, ExecutionState.REFUSED, self._clock.now())
        self._decisions.admission_decided(match.rule.rule.name, "refuse", "dispatch_failed")
        await self._escalation.escalate(execution_id, f"refused: {detail}", "critical")

    def _matches(self, event: AlertEvent) -> list[RuleMatch]:
        occurrence = event.occurrence
        alert = Alert(
            labels=occurrence.labels,
            annotations=occurrence.annotations,
            status="resolved" if event.status == "resolved" else "firing",
            fingerprint=occurrence.fingerprint,
            starts_at=occurrence.starts_at,
            generator_url=occurrence.generator_url,
        )
        context = NotificationContext(external_url=event.external_url, common_labels=event.common_labels)
        return self._rules().match(alert, context)

    async def _dispatch(self, event: AlertEvent, retrying: bool = False) -> None:
        """`retrying`: an earlier try failed part-way, so a rule that already decided is not a re-send."""
        if event.status == "resolved" and event.previous_status == "firing":
            await self._resolved(event.occurrence.id)
        for match in self._matches(event):
            await self._decide(match, event, retrying)

    async def _resolved(self, occurrence_id: int) -> None:
        """The alert resolved: cancel its queued runs, and running ones whose playbook says so."""
        for execution_id, state, _playbook in await self._store.active_for_occurrence(occurrence_id):
            if state == ExecutionState.QUEUED or self._executor.on_resolved(execution_id) == "cancel":
                if self._executor.cancel(execution_id):
                    await self._store.add_event(
                        execution_id, self._clock.now(), "resolved", "alert resolved: cancelled"
                    )
        await self._escalation.original_resolved(occurrence_id)  # closes the escalations of its runs

    async def _decide(self, match: RuleMatch, event: AlertEvent, retrying: bool = False) -> None:
        occurrence = event.occurrence
        rule = match.rule.rule
        now = self._clock.now()
        if not match.ok:  # a template or param refused, or a host not in the inventory
            verdict = admission.Verdict("refuse", match.refusal, match.error or "render failed")
        else:
            verdict = await admission.decide(
                self._store,
                match,
                occurrence.id,
                now,
                self._settings.storm,
                self._settings.dry_run,
                self._paused_by(occurrence.labels),
            )
        self._decisions.admission_decided(rule.name, verdict.decision, verdict.reason)
        fields = {
            "rule": rule.name,
            "fingerprint": occurrence.fingerprint,
            "decision": verdict.decision,
            "reason": verdict.reason,
            "target": match.target,
        }
        if verdict.decision == "repeat":
            assert verdict.existing_execution is not None
            if not retrying:
                await self._repeat(verdict.existing_execution, occurrence.receive_count, now)
            log.info("repeat", extra=fields)
            return
        state = _STATE_OF[verdict.decision]
        execution_id = new_execution_id(self._clock)
        try:
            await self._create(execution_id, match, event, verdict, state, now)
        except DuplicateExecution as exc:
            # another decision for this occurrence committed first (the store's unique key)
            await self._repeat(exc.existing_id, occurrence.receive_count, now)
            log.info("repeat", extra={**fields, "decision": "repeat", "execution_id": exc.existing_id})
            return
        log.info("admission", extra={**fields, "execution_id": execution_id})
        if verdict.decision == "refuse":
            # a storm is escalated whatever the rule says: it is about all rules, not this one
            if rule.escalate_on_refusal or verdict.reason == "storm":
                refusal = Refusal(
                    execution_id,
                    rule.name,
                    match.target,
                    occurrence.alertname,
                    verdict.reason,
                    verdict.detail,
                    rule.limits.window,
                    rule.severity,
                    occurrence.starts_at,
                )
                await self._pager.refused(refusal)
            return
        if verdict.decision == "shadow":
            return
        if modes.supersedes(verdict):
            for active in await self._store.active_for_target(rule.name, match.target):
                if active != execution_id and self._executor.cancel(active):
                    await self._store.add_event(active, now, "restart", f"cancelled: superseded by {execution_id}")
        rules = self._rules()
        playbook = rules.playbooks[match.playbook]
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
                hosts=match.hosts,
                inventory=rules.inventory,
            ),
            queued=modes.takes_turns(match),
        )

    def _paused_by(self, labels: Mapping[str, str]) -> str | None:
        """What pauses automation for an alert with these labels from outside (a silence), if anything."""
        pause = self._pauses.pause_for(labels) if self._pauses is not None else None
        return None if pause is None else pause.describe()

    async def admission_now(self, match: RuleMatch, labels: Mapping[str, str]) -> admission.Verdict:
        """What admission would decide right now for a new occurrence of `match` (an alert with these
        labels), with this dispatcher's store, settings and pauses; nothing is written."""
        return await admission.would_admit(
            self._store, match, self._clock.now(), self._settings.storm, self._settings.dry_run, self._paused_by(labels)
        )

    async def _repeat(self, execution_id: str, deliveries: int, now: datetime) -> None:
        await self._store.add_repeat(execution_id, now, f"alert delivered again ({deliveries} deliveries)")

    async def _create(
        self,
        execution_id: str,
        match: RuleMatch,
        event: AlertEvent,
        verdict: admission.Verdict,
        state: ExecutionState,
        now: datetime,
    ) -> None:
        occurrence = event.occurrence
        rule = match.rule.rule
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
                occurrence_run=None if verdict.reason in _UNDECIDED else verdict.occurrence_run,
            ),
            now,
        )
