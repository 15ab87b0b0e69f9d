"""The SQLite store: the commit engine (engine.py) with the SQL of each concern, one module each."""

from __future__ import annotations

from service.store.admission import AdmissionSQL
from service.store.executions import ExecutionSQL
from service.store.intake import IntakeSQL
from service.store.paging import PagingSQL
from service.store.reads import ReadSQL
from service.store.reconcile import ReconcileSQL
from service.store.retention import RetentionSQL


class SQLiteStore(IntakeSQL, ReconcileSQL, ExecutionSQL, AdmissionSQL, PagingSQL, ReadSQL, RetentionSQL):
    """SQLite in WAL mode, one file, zero set-up, owned by one process. Implements every Protocol
    in service/store/protocols.py."""
