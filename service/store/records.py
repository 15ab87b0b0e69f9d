"""The values the store takes and returns: frozen dataclasses, no SQL, no sqlite3 object."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal


class ExecutionState(StrEnum):
    """Where an execution is. A StrEnum: each member equals its value, so the store binds it, JSON
    writes it and a comparison with the plain string holds."""

    QUEUED = "queued"
    RUNNING = "running"
    VERIFYING = "verifying"
    AWAITING_APPROVAL = "awaiting_approval"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    ESCALATED = "escalated"
    REFUSED = "refused"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"
    SKIPPED = "skipped"  # a shadow (or dry-run) decision: recorded, never run; neither active nor terminal


TERMINAL_STATES = frozenset(
    {
        ExecutionState.SUCCEEDED,
        ExecutionState.FAILED,
        ExecutionState.ESCALATED,
        ExecutionState.REFUSED,
        ExecutionState.CANCELLED,
        ExecutionState.INTERRUPTED,
    }
)


ACTIVE_STATES = (
    ExecutionState.QUEUED,
    ExecutionState.RUNNING,
    ExecutionState.VERIFYING,
    ExecutionState.AWAITING_APPROVAL,
)


# How an occurrence first reached the store: a webhook delivery, or the reconciler finding it among
# Alertmanager's active alerts (no webhook brought it).
OccurrenceSource = Literal["webhook", "reconcile"]


@dataclass(frozen=True)
class Occurrence:
    id: int
    fingerprint: str
    starts_at: datetime
    alertname: str
    labels: dict[str, str]
    annotations: dict[str, str]
    generator_url: str
    status: str
    ends_at: datetime | None
    receive_count: int
    source: OccurrenceSource = "webhook"  # how it first came; later deliveries never change it


@dataclass(frozen=True)
class AlertEvent:
    """One alert as one notification delivered it, with its occurrence as that delivery left it."""

    id: int
    notification_id: int
    status: str
    previous_status: str | None
    occurrence: Occurrence
    common_labels: dict[str, str]
    external_url: str


@dataclass(frozen=True)
class NotificationReceipt:
    """What one committed notification became: its row, how many alerts it held, the events the
    dispatcher has to see (those stored as already dispatched are not among them), and which of its
    alerts (by position) no rule wants and were first received now. No row (None) when every alert
    was a re-send acknowledged from memory, written later."""

    notification_id: int | None
    alert_count: int
    events: tuple[AlertEvent, ...]
    new_unmatched: tuple[int, ...] = ()


@dataclass(frozen=True)
class NewExecution:
    id: str
    rule: str
    rule_version: str
    playbook: str
    playbook_version: str
    target: str
    occurrence_id: int | None
    fingerprint: str
    alertname: str
    mode: str  # enforce | shadow | dry_run
    params: Mapping[str, Any]
    state: str
    reason: str = ""
    refusal: str | None = None  # the refusal's key when state is refused
    # Which run of this rule for this occurrence (1, then 2 after a rerun_after ...): the store
    # refuses a second execution with the same number. Refusals have none.
    occurrence_run: int | None = 1


@dataclass(frozen=True)
class StepRecord:
    phase: str  # steps | verify | on_failure
    name: str
    type: str
    attempt: int
    started_at: datetime
    duration_s: float
    ok: bool
    status: str
    summary: str
    output: str
    exit_code: int | None
    data: Mapping[str, Any]


@dataclass(frozen=True)
class PruneResult:
    executions: int
    alert_events: int
    occurrences: int
    notifications: int


@dataclass(frozen=True)
class PriorRun:
    id: str
    state: str
    created_at: datetime
    occurrence_run: int


@dataclass(frozen=True)
class TargetHistory:
    runs_in_window: int
    last_run_at: datetime | None
    active: int


@dataclass(frozen=True)
class TargetActivity:
    """A run for a target that makes a page about it premature: running now, or verified lately."""

    execution_id: str
    kind: Literal["running", "verified"]
    finished_at: datetime | None


@dataclass(frozen=True)
class StepProcess:
    """The process group a step started (its own session), recorded while the step runs."""

    execution_id: str
    step: str
    pgid: int
    boot_id: str
    leader_start: str


@dataclass(frozen=True)
class ExecutionRecord:
    execution: dict[str, Any]
    steps: list[dict[str, Any]]
    events: list[dict[str, Any]]
    occurrence: dict[str, Any] | None
    escalations: list[dict[str, Any]] = field(default_factory=list)
    approvals: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class NewEscalation:
    id: str
    execution_id: str
    kind: str  # failed | approval
    reason: str
    severity: str
    opened_at: datetime
    facts: Mapping[str, Any]


@dataclass(frozen=True)
class OutboxMessage:
    dedup_key: str  # unique: a second copy of the same level's message to a channel is never queued
    channel: str
    kind: str  # notify | close
    level: int
    payload: Mapping[str, Any]


@dataclass(frozen=True)
class OpenEscalation:
    id: str
    execution_id: str
    kind: str
    reason: str
    severity: str
    opened_at: datetime
    level: int
    facts: dict[str, Any]
    occurrence_id: int | None
    occurrence_status: str | None
    occurrence_seen_at: datetime | None  # when the alert's last notification arrived


@dataclass(frozen=True)
class Delivery:
    id: int
    escalation_id: str
    execution_id: str
    dedup_key: str
    channel: str
    kind: str
    level: int
    payload: dict[str, Any]
    attempts: int


@dataclass(frozen=True)
class ApprovalRequest:
    id: int
    execution_id: str
    step: str
    prompt: str
    requested_at: datetime
    deadline: datetime
    decided_at: datetime | None
    decision: str | None  # approved | denied | expired
    approver: str | None
