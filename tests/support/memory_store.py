"""An in-memory store written against the Protocols in service/store/protocols.py (IntakeStore,
ReconcileStore and DispatchStore, which includes AdmissionStore and PagingStore; it keeps no
escalations, so paging sees no open page): the admission and dispatcher tests
run on it as well as on SQLite, which shows those Protocols are all the flow needs of a store."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from service.alerts.webhook import WebhookNotification
from service.store import (
    ACTIVE_STATES,
    TERMINAL_STATES,
    AlertEvent,
    DuplicateExecution,
    ExecutionRecord,
    NewExecution,
    NotificationReceipt,
    Occurrence,
    OccurrenceSource,
    PriorRun,
    StepProcess,
    StoreError,
    TargetActivity,
    TargetHistory,
)


@dataclass
class _Execution:
    new: NewExecution
    created_at: datetime
    state: str
    occurrence_run: int | None
    events: list[dict[str, Any]] = field(default_factory=list)
    finished_at: datetime | None = None
    page_due_at: datetime | None = None


@dataclass
class _Event:
    event: AlertEvent
    dispatched: bool


class MemoryStore:
    def __init__(self, path: Path) -> None:
        self._path = path
        self._open = False
        self._occurrences: dict[tuple[str, datetime], Occurrence] = {}
        self._occurrence_ids = itertools.count(1)
        self._event_ids = itertools.count(1)
        self._notification_ids = itertools.count(1)
        self._events: dict[int, _Event] = {}
        self._executions: dict[str, _Execution] = {}

    # --- StoreLifecycle (the part the tests use) --------------------------------------------------

    @property
    def path(self) -> Path:
        return self._path

    async def open(self, *, own: bool = True) -> None:
        self._open = True

    async def close(self) -> None:
        self._open = False

    def _require_open(self) -> None:
        if not self._open:
            raise StoreError("store is closed")

    # --- IntakeStore ------------------------------------------------------------------------------

    async def record_notification(
        self,
        notification: WebhookNotification,
        body: bytes,
        received_at: datetime,
        wanted: Sequence[bool] | None = None,
        source: OccurrenceSource = "webhook",
    ) -> NotificationReceipt:
        self._require_open()
        notification_id = next(self._notification_ids)
        events = []
        for alert, rule_wants in zip(notification.alerts, wanted or [True] * len(notification.alerts), strict=True):
            key = (alert.fingerprint, alert.startsAt)
            known = self._occurrences.get(key)
            previous_status = None if known is None else known.status
            # status moves forward only: a firing for an occurrence already resolved is stale
            stale = known is not None and known.status == "resolved" and alert.status == "firing"
            if known is None:
                occurrence = Occurrence(
                    id=next(self._occurrence_ids),
                    fingerprint=alert.fingerprint,
                    starts_at=alert.startsAt,
                    alertname=alert.labels.get("alertname", ""),
                    labels=alert.labels,
                    annotations=alert.annotations,
                    generator_url=alert.generatorURL,
                    status=alert.status,
                    ends_at=alert.ends_at,
                    receive_count=1,
                    source=source,
                )
            elif stale:
                occurrence = replace(known, receive_count=known.receive_count + 1)
            else:
                occurrence = replace(
                    known,
                    labels=alert.labels,
                    annotations=alert.annotations,
                    status=alert.status,
                    ends_at=alert.ends_at,
                    receive_count=known.receive_count + 1,
                )
            self._occurrences[key] = occurrence
            pending = not stale and (rule_wants or (alert.status == "resolved" and previous_status == "firing"))
            event = AlertEvent(
                id=next(self._event_ids),
                notification_id=notification_id,
                status=alert.status,
                previous_status=previous_status,
                occurrence=occurrence,
                common_labels=notification.commonLabels,
                external_url=notification.externalURL,
            )
            self._events[event.id] = _Event(event, dispatched=not pending)
            if pending:
                events.append(event)
        return NotificationReceipt(notification_id, len(notification.alerts), tuple(events))

    def acknowledge_repeated_body(self, body: bytes, received_at: datetime) -> WebhookNotification | None:
        return None  # every delivery is stored at once: nothing waits

    def acknowledge_resend(self, notification: WebhookNotification, body: bytes, received_at: datetime) -> bool:
        return False  # every delivery is stored at once: nothing waits

    async def write_resends(self, wants: Callable[[str, Mapping[str, str]], bool]) -> tuple[AlertEvent, ...]:
        return ()

    # --- ReconcileStore ---------------------------------------------------------------------------

    async def occurrence_statuses(self, keys: Sequence[tuple[str, datetime]]) -> dict[tuple[str, datetime], str]:
        self._require_open()
        # datetimes of one instant are equal and hash alike, whatever their zone
        return {key: self._occurrences[key].status for key in keys if key in self._occurrences}

    async def firing_occurrences(self, limit: int) -> list[Occurrence]:
        self._require_open()
        firing = [o for o in self._occurrences.values() if o.status == "firing"]
        return sorted(firing, key=lambda o: (o.starts_at, o.id))[:limit]

    # --- DispatchStore ----------------------------------------------------------------------------

    async def undispatched_alert_events(self, limit: int, after: int = 0) -> list[AlertEvent]:
        self._require_open()
        pending = [e.event for i, e in sorted(self._events.items()) if i > after and not e.dispatched]
        return pending[:limit]

    async def mark_dispatched(self, event_ids: Sequence[int], at: datetime) -> None:
        self._require_open()
        for event_id in event_ids:
            self._events[event_id].dispatched = True

    async def create_execution(self, execution: NewExecution, at: datetime) -> None:
        self._require_open()
        run = execution.occurrence_run
        if run is not None and execution.occurrence_id is not None:
            for existing in self._executions.values():
                same = (existing.new.rule, existing.new.occurrence_id, existing.occurrence_run)
                if same == (execution.rule, execution.occurrence_id, run):
                    raise DuplicateExecution(existing.new.id)
        record = _Execution(execution, at, execution.state, run)
        record.events.append({"at": at, "kind": "state", "message": f"{execution.state}: {execution.reason}"})
        self._executions[execution.id] = record

    async def set_state(self, execution_id: str, state: str, at: datetime, reason: str = "") -> None:
        self._require_open()
        record = self._executions[execution_id]
        record.state = state
        if state in TERMINAL_STATES:
            record.finished_at = at
        record.events.append({"at": at, "kind": "state", "message": f"{state}: {reason}" if reason else state})

    async def add_event(
        self, execution_id: str, at: datetime, kind: str, message: str, data: Mapping[str, Any] | None = None
    ) -> None:
        self._require_open()
        self._executions[execution_id].events.append({"at": at, "kind": kind, "message": message})

    async def add_repeat(self, execution_id: str, at: datetime, message: str) -> None:
        await self.add_event(execution_id, at, "repeat", message)

    async def active_for_occurrence(self, occurrence_id: int) -> list[tuple[str, str, str]]:
        return [
            (e.new.id, e.state, e.new.playbook)
            for e in self._executions.values()
            if e.new.occurrence_id == occurrence_id and e.state in ACTIVE_STATES
        ]

    async def active_for_target(self, rule: str, target: str) -> list[str]:
        return [e.new.id for e in self._of(rule, target) if e.state in ACTIVE_STATES]

    async def count_refusals(
        self, rule: str | None, target: str | None, refusal: str, since: datetime, cap: int
    ) -> int:
        matching = [
            e
            for e in self._executions.values()
            if e.new.refusal == refusal
            and e.created_at > since
            and rule in (None, e.new.rule)
            and target in (None, e.new.target)
        ]
        return min(cap, len(matching))

    async def executions_in_state(self, states: Sequence[str]) -> list[str]:
        return [e.new.id for e in sorted(self._executions.values(), key=lambda e: e.created_at) if e.state in states]

    async def get_execution(self, execution_id: str) -> ExecutionRecord | None:
        record = self._executions.get(execution_id)
        if record is None:
            return None
        new = record.new
        execution = {**vars(new), "state": record.state, "created_at": record.created_at, "started_at": None}
        occurrence = next((vars(o) for o in self._occurrences.values() if o.id == new.occurrence_id), None)
        return ExecutionRecord(execution=execution, steps=[], events=list(record.events), occurrence=occurrence)

    # --- AdmissionStore ---------------------------------------------------------------------------

    async def execution_for_occurrence(self, rule: str, occurrence_id: int) -> PriorRun | None:
        runs = [
            e
            for e in self._executions.values()
            if e.new.rule == rule and e.new.occurrence_id == occurrence_id and e.occurrence_run is not None
        ]
        if not runs:
            return None
        last = max(runs, key=lambda e: e.occurrence_run or 0)
        return PriorRun(last.new.id, last.state, last.created_at, last.occurrence_run or 0)

    async def active_pauses(self, at: datetime) -> list[dict[str, Any]]:
        return []  # people pause through MaintenanceStore, which this store does not serve

    async def admissions_since(self, since: datetime) -> int:
        return sum(1 for e in self._executions.values() if self._admitted(e) and e.created_at > since)

    async def target_history(self, rule: str, target: str, since: datetime) -> TargetHistory:
        admitted = [e for e in self._of(rule, target) if self._admitted(e)]
        runs = sum(1 for e in admitted if e.created_at > since)
        last = max((e.created_at for e in admitted), default=None)
        active = sum(1 for e in self._of(rule, target) if e.state in ACTIVE_STATES)
        return TargetHistory(runs, last, active)

    def _of(self, rule: str, target: str) -> list[_Execution]:
        return [e for e in self._executions.values() if e.new.rule == rule and e.new.target == target]

    @staticmethod
    def _admitted(execution: _Execution) -> bool:
        return execution.state != "refused" and execution.new.mode == "enforce"

    # --- PagingStore ------------------------------------------------------------------------------

    async def target_activity(self, target: str, verified_since: datetime) -> TargetActivity | None:
        of_target = [e for e in self._executions.values() if e.new.target == target and e.new.mode == "enforce"]
        running = [e for e in of_target if e.state in ACTIVE_STATES]
        if running:
            return TargetActivity(running[-1].new.id, "running", None)
        verified = [e for e in of_target if e.state == "succeeded" and e.finished_at and e.finished_at > verified_since]
        if not verified:
            return None
        last = max(verified, key=lambda e: e.finished_at or verified_since)
        return TargetActivity(last.new.id, "verified", last.finished_at)

    async def open_page_for_target(self, target: str) -> str | None:
        return None

    async def refusal_paged_since(self, rule: str | None, target: str | None, since: datetime) -> str | None:
        return None

    async def set_page_due(self, execution_id: str, due_at: datetime | None) -> None:
        self._executions[execution_id].page_due_at = due_at

    async def pages_due(self, now: datetime, limit: int) -> list[str]:
        due = [e for e in self._executions.values() if e.page_due_at is not None and e.page_due_at <= now]
        return [e.new.id for e in sorted(due, key=lambda e: e.page_due_at or now)][:limit]

    # --- crash recovery ---------------------------------------------------------------------------

    async def step_processes(self, execution_id: str) -> list[StepProcess]:
        return []

    async def forget_process(self, execution_id: str, pgid: int) -> None:
        return None
