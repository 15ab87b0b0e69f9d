"""Retention: finished executions and what only they referred to, deleted after a while."""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime

from service.store.engine import SQLiteEngine
from service.store.records import TERMINAL_STATES, PruneResult
from service.store.remembered import RememberedOccurrences
from service.times import timestamp


class RetentionSQL(SQLiteEngine):
    _remembered: RememberedOccurrences  # IntakeSQL's, in the composed store

    async def prune(self, before: datetime) -> PruneResult:
        """Delete finished executions created before `before` (their steps, events, escalations and
        approvals cascade), then the alerts and notifications no execution refers to any more."""
        cutoff = timestamp(before)
        finished = ", ".join(f"'{state}'" for state in sorted(TERMINAL_STATES | {"skipped"}))

        def delete(conn: sqlite3.Connection) -> PruneResult:
            executions = conn.execute(
                f"DELETE FROM executions WHERE created_at < ? AND state IN ({finished})", (cutoff,)
            ).rowcount
            events = conn.execute(
                "DELETE FROM alert_events WHERE dispatched_at IS NOT NULL AND notification_id IN"
                " (SELECT id FROM notifications WHERE received_at < ?)",
                (cutoff,),
            ).rowcount
            # An occurrence with deliveries acknowledged from memory and not written yet was just
            # received, whatever its row says: it stays. What is deleted leaves the memory now, on
            # the loop before the COMMIT, so no re-send of it is answered from memory meanwhile.
            deleted = conn.execute(
                "DELETE FROM occurrences WHERE last_received_at < ?"
                " AND id NOT IN (SELECT occurrence_id FROM executions WHERE occurrence_id IS NOT NULL)"
                " AND id NOT IN (SELECT occurrence_id FROM alert_events)"
                " AND id NOT IN (SELECT value FROM json_each(?))"
                " RETURNING fingerprint, starts_at",
                (cutoff, json.dumps(self._remembered.waiting_ids())),
            ).fetchall()
            self._remembered.forget((fingerprint, starts_at) for fingerprint, starts_at in deleted)
            occurrences = len(deleted)
            notifications = conn.execute(
                "DELETE FROM notifications WHERE received_at < ?"
                " AND id NOT IN (SELECT notification_id FROM alert_events)",
                (cutoff,),
            ).rowcount
            return PruneResult(executions, events, occurrences, notifications)

        return await self.write(delete)
