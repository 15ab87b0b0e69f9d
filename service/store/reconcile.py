"""The reconciler's reads: which of Alertmanager's active alerts the store knows, and which
occurrences the store thinks are still firing. Its writes go through intake (record_notification,
source="reconcile"), so a reconciled alert is stored exactly like a delivered one."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from datetime import datetime

from service.store.engine import SQLiteEngine
from service.store.records import Occurrence
from service.store.rows import occurrence_row
from service.times import timestamp

# Keys per statement: two variables each, under SQLite's oldest default limit of 999 variables.
_KEYS_PER_STATEMENT = 400


class ReconcileSQL(SQLiteEngine):
    async def occurrence_statuses(self, keys: Sequence[tuple[str, datetime]]) -> dict[tuple[str, datetime], str]:
        """The stored status of each (fingerprint, startsAt) the store knows; unknown keys are left
        out. startsAt is compared as the store writes it (UTC text), and the answer's keys are the
        caller's own, so a caller can look up what it asked with any time zone."""
        asked: dict[tuple[str, str], list[tuple[str, datetime]]] = {}
        for fingerprint, starts_at in keys:
            asked.setdefault((fingerprint, timestamp(starts_at)), []).append((fingerprint, starts_at))
        stored = list(asked)

        def select(conn: sqlite3.Connection) -> dict[tuple[str, datetime], str]:
            statuses: dict[tuple[str, datetime], str] = {}
            for start in range(0, len(stored), _KEYS_PER_STATEMENT):
                chunk = stored[start : start + _KEYS_PER_STATEMENT]
                values = ", ".join("(?, ?)" for _ in chunk)
                # a join from the keys, not a row-value IN: each key is then one search of the
                # UNIQUE (fingerprint, starts_at) index, where IN (VALUES ...) scans the table
                rows = conn.execute(
                    f"SELECT o.fingerprint, o.starts_at, o.status FROM (VALUES {values}) AS k"
                    " JOIN occurrences o ON o.fingerprint = k.column1 AND o.starts_at = k.column2",
                    [part for key in chunk for part in key],
                ).fetchall()
                for fingerprint, starts_at, status in rows:
                    for key in asked[(fingerprint, starts_at)]:
                        statuses[key] = status
            return statuses

        if not stored:
            return {}
        return await self.read(select)

    async def firing_occurrences(self, limit: int) -> list[Occurrence]:
        """Up to `limit` occurrences the store has as firing, oldest (by startsAt) first."""

        def select(conn: sqlite3.Connection) -> list[Occurrence]:
            rows = conn.execute(
                "SELECT id AS occurrence_id, fingerprint, starts_at, alertname, labels, annotations, generator_url,"
                " status AS occurrence_status, ends_at, receive_count, source"
                " FROM occurrences WHERE status = 'firing' ORDER BY starts_at, id LIMIT ?",
                (limit,),
            ).fetchall()
            return [occurrence_row(row) for row in rows]

        return await self.read(select)
