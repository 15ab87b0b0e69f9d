"""What each caller needs of a store, by name: one small Protocol per slice of the flow.

Callers are typed to these, never to `SQLiteStore`, so a second store (PostgreSQL for replicas) or a
test's in-memory fake implements the slices it serves and nothing else has to change. Every method
commits before it returns (writes) or reads committed state (reads); each raises StoreError when the
store cannot do it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from service.alerts.webhook import WebhookNotification
from service.store.records import (
    AlertEvent,
    ApprovalRequest,
    Delivery,
    ExecutionRecord,
    NewEscalation,
    NewExecution,
    NotificationReceipt,
    Occurrence,
    OccurrenceSource,
    OpenEscalation,
    OutboxMessage,
    PriorRun,
    PruneResult,
    StepProcess,
    StepRecord,
    TargetActivity,
    TargetHistory,
)


class StoreLifecycle(Protocol):
    """Opening, closing and health: what the app's cleanup context and /-/ready use."""

    @property
    def path(self) -> Path: ...

    async def open(self, *, own: bool = True) -> None: ...

    async def close(self) -> None: ...

    def problem(self) -> str | None: ...


class IntakeStore(Protocol):
    """The webhook: a notification and its alerts, committed before the 200. One exception: a
    notification whose every alert is a pure re-send of an occurrence already committed may be
    acknowledged from memory (`acknowledge_resend`); its deliveries (count, last-seen time) wait for
    `write_resends`, and a crash meanwhile loses them, never the occurrence."""

    def acknowledge_repeated_body(self, body: bytes, received_at: datetime) -> WebhookNotification | None: ...

    def acknowledge_resend(self, notification: WebhookNotification, body: bytes, received_at: datetime) -> bool: ...

    async def record_notification(
        self,
        notification: WebhookNotification,
        body: bytes,
        received_at: datetime,
        wanted: Sequence[bool] | None = None,
        source: OccurrenceSource = "webhook",
    ) -> NotificationReceipt: ...

    async def write_resends(self, wants: Callable[[str, Mapping[str, str]], bool]) -> tuple[AlertEvent, ...]: ...


class ReconcileStore(Protocol):
    """The reconciler's reads: what the store knows of Alertmanager's active alerts, and what it
    thinks is still firing. What it finds goes in through IntakeStore, with source="reconcile"."""

    async def occurrence_statuses(self, keys: Sequence[tuple[str, datetime]]) -> dict[tuple[str, datetime], str]: ...

    async def firing_occurrences(self, limit: int) -> list[Occurrence]: ...


class AdmissionStore(Protocol):
    """Admission's questions: was this occurrence handled, is automation paused, what ran lately."""

    async def execution_for_occurrence(self, rule: str, occurrence_id: int) -> PriorRun | None: ...

    async def active_pauses(self, at: datetime) -> list[dict[str, Any]]: ...

    async def admissions_since(self, since: datetime) -> int: ...

    async def target_history(self, rule: str, target: str, since: datetime) -> TargetHistory: ...


class ExecutionStore(Protocol):
    """The executor: state transitions, steps and the timeline of one run, and its approvals."""

    async def set_state(self, execution_id: str, state: str, at: datetime, reason: str = "") -> None: ...

    async def add_event(
        self, execution_id: str, at: datetime, kind: str, message: str, data: Mapping[str, Any] | None = None
    ) -> None: ...

    async def record_step(self, execution_id: str, step: StepRecord) -> None: ...

    async def occurrence_status(self, occurrence_id: int) -> str: ...

    async def open_approval(
        self, execution_id: str, step: str, prompt: str, requested_at: datetime, deadline: datetime
    ) -> ApprovalRequest: ...

    async def decide_approval(self, approval_id: int, decision: str, approver: str, at: datetime) -> bool: ...

    async def record_process(self, process: StepProcess, at: datetime) -> None: ...

    async def forget_process(self, execution_id: str, pgid: int) -> None: ...


class PagingStore(Protocol):
    """Paging: is a target's incident already in hand or paged, and the refusals whose page waits."""

    async def target_activity(self, target: str, verified_since: datetime) -> TargetActivity | None: ...

    async def open_page_for_target(self, target: str) -> str | None: ...

    async def refusal_paged_since(self, rule: str | None, target: str | None, since: datetime) -> str | None: ...

    async def set_page_due(self, execution_id: str, due_at: datetime | None) -> None: ...

    async def pages_due(self, now: datetime, limit: int) -> list[str]: ...

    async def count_refusals(
        self, rule: str | None, target: str | None, refusal: str, since: datetime, cap: int
    ) -> int: ...

    async def add_event(
        self, execution_id: str, at: datetime, kind: str, message: str, data: Mapping[str, Any] | None = None
    ) -> None: ...

    async def get_execution(self, execution_id: str) -> ExecutionRecord | None: ...


class DispatchStore(AdmissionStore, PagingStore, Protocol):
    """The dispatcher: the queue of committed alert events, decisions recorded as executions, and
    crash recovery (it also asks admission's questions, through the same store)."""

    async def undispatched_alert_events(self, limit: int, after: int = 0) -> list[AlertEvent]: ...

    async def mark_dispatched(self, event_ids: Sequence[int], at: datetime) -> None: ...

    async def create_execution(self, execution: NewExecution, at: datetime) -> None: ...

    async def set_state(self, execution_id: str, state: str, at: datetime, reason: str = "") -> None: ...

    async def add_event(
        self, execution_id: str, at: datetime, kind: str, message: str, data: Mapping[str, Any] | None = None
    ) -> None: ...

    async def add_repeat(self, execution_id: str, at: datetime, message: str) -> None: ...

    async def active_for_occurrence(self, occurrence_id: int) -> list[tuple[str, str, str]]: ...

    async def active_for_target(self, rule: str, target: str) -> list[str]: ...

    async def executions_in_state(self, states: Sequence[str]) -> list[str]: ...

    async def get_execution(self, execution_id: str) -> ExecutionRecord | None: ...

    async def step_processes(self, execution_id: str) -> list[StepProcess]: ...

    async def forget_process(self, execution_id: str, pgid: int) -> None: ...


class EscalationStore(Protocol):
    """Escalations, their outbox of messages per channel, and approvals left by a crash."""

    async def add_event(
        self, execution_id: str, at: datetime, kind: str, message: str, data: Mapping[str, Any] | None = None
    ) -> None: ...

    async def get_execution(self, execution_id: str) -> ExecutionRecord | None: ...

    async def open_escalation(
        self, escalation: NewEscalation, messages: Sequence[OutboxMessage], event: Mapping[str, Any]
    ) -> None: ...

    async def enqueue_level(
        self, escalation_id: str, level: int, messages: Sequence[OutboxMessage], at: datetime, note: str
    ) -> bool: ...

    async def close_escalation(
        self, escalation_id: str, state: str, by: str, reason: str, at: datetime, closings: Sequence[OutboxMessage]
    ) -> bool: ...

    async def open_escalations(self, execution_id: str | None = None) -> list[OpenEscalation]: ...

    async def due_deliveries(self, now: datetime, limit: int) -> list[Delivery]: ...

    async def next_delivery_at(self) -> datetime | None: ...

    async def delivery_succeeded(self, delivery: Delivery, at: datetime, note: str) -> None: ...

    async def delivery_failed(
        self, delivery: Delivery, at: datetime, error: str, retry_at: datetime | None, note: str | None
    ) -> None: ...

    async def delivered_notifications(self) -> list[Delivery]: ...

    async def orphaned_approvals(self) -> list[ApprovalRequest]: ...

    async def decide_approval(self, approval_id: int, decision: str, approver: str, at: datetime) -> bool: ...


class ReportStore(Protocol):
    """The API and the pages: one execution whole, the list, the per-rule figures, the alerts no rule
    matched."""

    async def get_execution(self, execution_id: str) -> ExecutionRecord | None: ...

    async def list_executions(
        self, limit: int = 50, offset: int = 0, filters: Mapping[str, str] | None = None
    ) -> list[dict[str, Any]]: ...

    async def rule_figures(self) -> list[dict[str, Any]]: ...

    async def unmatched_alerts(self, limit: int) -> list[dict[str, Any]]: ...

    async def escalations_for(self, execution_id: str) -> list[dict[str, Any]]: ...

    async def approvals_for(self, execution_id: str) -> list[ApprovalRequest]: ...


class MaintenanceStore(Protocol):
    """People pausing automation and resetting tripped limits."""

    async def active_pauses(self, at: datetime) -> list[dict[str, Any]]: ...

    async def add_pause(
        self, rule: str, target: str, reason: str, by: str, at: datetime, until: datetime | None
    ) -> int: ...

    async def clear_pause(self, pause_id: int, at: datetime) -> bool: ...

    async def reset_limits(self, rule: str, target: str, by: str, at: datetime) -> None: ...


class RetentionStore(Protocol):
    async def prune(self, before: datetime) -> PruneResult: ...


class ServiceStore(
    StoreLifecycle,
    IntakeStore,
    ReconcileStore,
    DispatchStore,
    ExecutionStore,
    EscalationStore,
    ReportStore,
    MaintenanceStore,
    RetentionStore,
    Protocol,
):
    """Everything the running service uses: what the app factory builds and hands out in slices."""
