"""The store: the only package that speaks SQL.

Callers use the domain methods (`record_notification`, `create_execution`, `target_history`, ...),
which take and return plain values and dataclasses (records.py): no SQL and no sqlite3 object
crosses that line (`write`/`read` are for this package, tests and benchmarks).

- engine.py: connections, the ownership lock, group commit (one writer, one fsync for many posts)
- schema.py: versioned migrations
- intake.py, reconcile.py, executions.py, admission.py, paging.py, escalations.py, reads.py, retention.py: the
  SQL of one concern each, as mixins of the engine; sqlite.py composes them into `SQLiteStore`
- records.py: the values in and out; errors.py: what it raises
"""

from pathlib import Path

from service.store.engine import Synchronous
from service.store.errors import DuplicateExecution, StoreError
from service.store.executions import REPEAT_EVENTS_KEPT
from service.store.protocols import (
    AdmissionStore,
    DispatchStore,
    EscalationStore,
    ExecutionStore,
    IntakeStore,
    MaintenanceStore,
    PagingStore,
    ReconcileStore,
    ReportStore,
    RetentionStore,
    ServiceStore,
    StoreLifecycle,
)
from service.store.records import (
    ACTIVE_STATES,
    TERMINAL_STATES,
    AlertEvent,
    ApprovalRequest,
    Delivery,
    ExecutionRecord,
    ExecutionState,
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
from service.store.remembered import DEFAULT_LIMIT
from service.store.schema import MIGRATIONS
from service.store.sqlite import SQLiteStore


def new_store(path: Path, synchronous: Synchronous = "full", remembered: int = DEFAULT_LIMIT) -> ServiceStore:
    """The store the service runs on. Callers hold it by the Protocols they use; which backend
    serves them is decided here (SQLite today; PostgreSQL for replicas is planned). `remembered`:
    how many committed occurrences it remembers for re-sends (service.store.remembered)."""
    return SQLiteStore(path, synchronous, remembered=remembered)


__all__ = [
    "ACTIVE_STATES",
    "MIGRATIONS",
    "REPEAT_EVENTS_KEPT",
    "TERMINAL_STATES",
    "AdmissionStore",
    "AlertEvent",
    "ApprovalRequest",
    "Delivery",
    "DispatchStore",
    "DuplicateExecution",
    "EscalationStore",
    "ExecutionRecord",
    "ExecutionState",
    "ExecutionStore",
    "IntakeStore",
    "MaintenanceStore",
    "NewEscalation",
    "NewExecution",
    "NotificationReceipt",
    "Occurrence",
    "OccurrenceSource",
    "OpenEscalation",
    "OutboxMessage",
    "PagingStore",
    "PriorRun",
    "PruneResult",
    "ReconcileStore",
    "ReportStore",
    "RetentionStore",
    "SQLiteStore",
    "ServiceStore",
    "StepProcess",
    "StepRecord",
    "StoreError",
    "StoreLifecycle",
    "Synchronous",
    "TargetActivity",
    "TargetHistory",
    "new_store",
]
