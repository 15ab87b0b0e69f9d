"""Escalations, their delivery outbox, and approval requests."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from service.store.engine import SQLiteEngine
from service.store.records import (
    TERMINAL_STATES,
    ApprovalRequest,
    Delivery,
    NewEscalation,
    OpenEscalation,
    OutboxMessage,
)
from service.store.rows import insert_event, required_time
from service.times import parse_timestamp, timestamp

_OUTBOX_PENDING = "delivered_at IS NULL AND superseded_at IS NULL AND abandoned_at IS NULL"


def _queue_messages(conn: sqlite3.Connection, escalation_id: str, when: str, messages: Sequence[OutboxMessage]) -> None:
    conn.executemany(
        "INSERT OR IGNORE INTO escalation_outbox (escalation_id, dedup_key, channel, kind, level, payload, created_at,"
        " next_attempt_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        [
            (escalation_id, m.dedup_key, m.channel, m.kind, m.level, json.dumps(m.payload, default=str), when, when)
            for m in messages
        ],
    )


def _deliveries(conn: sqlite3.Connection, where: str, args: tuple[Any, ...]) -> list[Delivery]:
    rows = conn.execute(
        "SELECT o.id, o.escalation_id, e.execution_id, o.dedup_key, o.channel, o.kind, o.level, o.payload, o.attempts"
        f" FROM escalation_outbox o JOIN escalations e ON e.id = o.escalation_id {where}",
        args,
    ).fetchall()
    return [Delivery(r[0], r[1], r[2], r[3], r[4], r[5], r[6], json.loads(r[7]), r[8]) for r in rows]


def _delivery_data(delivery: Delivery) -> dict[str, Any]:
    return {
        "escalation_id": delivery.escalation_id,
        "channel": delivery.channel,
        "kind": delivery.kind,
        "level": delivery.level,
    }


def _approval(row: Sequence[Any]) -> ApprovalRequest:
    return ApprovalRequest(
        id=row[0],
        execution_id=row[1],
        step=row[2],
        prompt=row[3],
        requested_at=required_time(row[4]),
        deadline=required_time(row[5]),
        decided_at=parse_timestamp(row[6]),
        decision=row[7],
        approver=row[8],
    )


class EscalationSQL(SQLiteEngine):
    async def open_escalation(
        self, escalation: NewEscalation, messages: Sequence[OutboxMessage], event: Mapping[str, Any]
    ) -> None:
        """The escalation, its first level's messages and its timeline event, in one transaction."""
        when = timestamp(escalation.opened_at)

        def insert(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO escalations (id, execution_id, kind, reason, severity, opened_at, state, level, facts)"
                " VALUES (?, ?, ?, ?, ?, ?, 'open', 0, ?)",
                (
                    escalation.id,
                    escalation.execution_id,
                    escalation.kind,
                    escalation.reason,
                    escalation.severity,
                    when,
                    json.dumps(escalation.facts, default=str),
                ),
            )
            _queue_messages(conn, escalation.id, when, messages)
            insert_event(conn, escalation.execution_id, when, "escalation", escalation.reason, event)

        await self.write(insert)

    async def enqueue_level(
        self, escalation_id: str, level: int, messages: Sequence[OutboxMessage], at: datetime, note: str
    ) -> bool:
        """Queue a later level's messages, unless the escalation closed or the level was queued already."""
        when = timestamp(at)

        def insert(conn: sqlite3.Connection) -> bool:
            row = conn.execute(
                "SELECT execution_id FROM escalations WHERE id = ? AND state = 'open' AND level < ?",
                (escalation_id, level),
            ).fetchone()
            if row is None:
                return False
            conn.execute("UPDATE escalations SET level = ? WHERE id = ?", (level, escalation_id))
            _queue_messages(conn, escalation_id, when, messages)
            data = {"escalation_id": escalation_id, "level": level, "channels": [m.channel for m in messages]}
            insert_event(conn, row[0], when, "escalation", note, data)
            return True

        return await self.write(insert)

    async def close_escalation(
        self, escalation_id: str, state: str, by: str, reason: str, at: datetime, closings: Sequence[OutboxMessage]
    ) -> bool:
        """Close an open escalation: unsent messages are superseded, and the closing messages go to the
        channels that may have shown it (a notification delivered or tried). False if not open."""
        when = timestamp(at)

        def update(conn: sqlite3.Connection) -> bool:
            row = conn.execute(
                "SELECT execution_id FROM escalations WHERE id = ? AND state = 'open'", (escalation_id,)
            ).fetchone()
            if row is None:
                return False
            conn.execute(
                "UPDATE escalations SET state = ?, closed_at = ?, acked_by = ?, close_reason = ? WHERE id = ?",
                (state, when, by if state == "acknowledged" else None, reason, escalation_id),
            )
            reached = {
                r[0]
                for r in conn.execute(
                    "SELECT DISTINCT channel FROM escalation_outbox WHERE escalation_id = ? AND kind = 'notify'"
                    " AND (delivered_at IS NOT NULL OR attempts > 0)",
                    (escalation_id,),
                )
            }
            conn.execute(
                f"UPDATE escalation_outbox SET superseded_at = ? WHERE escalation_id = ? AND {_OUTBOX_PENDING}",
                (when, escalation_id),
            )
            _queue_messages(conn, escalation_id, when, [m for m in closings if m.channel in reached])
            insert_event(
                conn,
                row[0],
                when,
                "escalation",
                f"{state} by {by}: {reason}",
                {"escalation_id": escalation_id, "state": state, "by": by},
            )
            return True

        return await self.write(update)

    async def open_escalations(self, execution_id: str | None = None) -> list[OpenEscalation]:
        """Open escalations (of one execution, or all), oldest first, with their alert's state."""
        where, args = ("AND e.execution_id = ?", (execution_id,)) if execution_id is not None else ("", ())

        def select(conn: sqlite3.Connection) -> list[OpenEscalation]:
            rows = conn.execute(
                "SELECT e.id, e.execution_id, e.kind, e.reason, e.severity, e.opened_at, e.level, e.facts,"
                " x.occurrence_id, o.status AS occurrence_status, o.last_received_at"
                " FROM escalations e JOIN executions x ON x.id = e.execution_id"
                f" LEFT JOIN occurrences o ON o.id = x.occurrence_id WHERE e.state = 'open' {where}"
                " ORDER BY e.opened_at, e.id",
                args,
            ).fetchall()
            return [
                OpenEscalation(
                    id=r["id"],
                    execution_id=r["execution_id"],
                    kind=r["kind"],
                    reason=r["reason"],
                    severity=r["severity"],
                    opened_at=required_time(r["opened_at"]),
                    level=r["level"],
                    facts=json.loads(r["facts"]),
                    occurrence_id=r["occurrence_id"],
                    occurrence_status=r["occurrence_status"],
                    occurrence_seen_at=parse_timestamp(r["last_received_at"]),
                )
                for r in rows
            ]

        return await self.read(select)

    async def due_deliveries(self, now: datetime, limit: int) -> list[Delivery]:
        return await self.read(
            lambda conn: _deliveries(
                conn,
                f"WHERE {_OUTBOX_PENDING} AND o.next_attempt_at <= ? ORDER BY o.id LIMIT ?",
                (timestamp(now), limit),
            )
        )

    async def next_delivery_at(self) -> datetime | None:
        return await self.read(
            lambda conn: parse_timestamp(
                conn.execute(f"SELECT min(next_attempt_at) FROM escalation_outbox WHERE {_OUTBOX_PENDING}").fetchone()[
                    0
                ]
            )
        )

    async def delivery_succeeded(self, delivery: Delivery, at: datetime, note: str) -> None:
        when = timestamp(at)

        def update(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE escalation_outbox SET delivered_at = ?, attempts = attempts + 1 WHERE id = ?",
                (when, delivery.id),
            )
            insert_event(conn, delivery.execution_id, when, "delivery", note, _delivery_data(delivery))

        await self.write(update)

    async def delivery_failed(
        self, delivery: Delivery, at: datetime, error: str, retry_at: datetime | None, note: str | None
    ) -> None:
        """Count a failed attempt: retry at `retry_at`, or give up when it is None."""
        when = timestamp(at)
        retry = None if retry_at is None else timestamp(retry_at)

        def update(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE escalation_outbox SET attempts = attempts + 1, last_error = ?,"
                " next_attempt_at = COALESCE(?, next_attempt_at), abandoned_at = CASE WHEN ? IS NULL THEN ? END"
                " WHERE id = ?",
                (error, retry, retry, when, delivery.id),
            )
            if note is not None:
                data = {**_delivery_data(delivery), "error": error}
                insert_event(conn, delivery.execution_id, when, "delivery", note, data)

        await self.write(update)

    async def delivered_notifications(self) -> list[Delivery]:
        """The latest delivered notification per (open escalation, channel): what re-posts repeat."""
        return await self.read(
            lambda conn: _deliveries(
                conn,
                "WHERE e.state = 'open' AND o.id IN (SELECT max(id) FROM escalation_outbox"
                " WHERE kind = 'notify' AND delivered_at IS NOT NULL GROUP BY escalation_id, channel) ORDER BY o.id",
                (),
            )
        )

    async def escalations_for(self, execution_id: str) -> list[dict[str, Any]]:
        """An execution's escalations, each with its messages (for reports), oldest first."""

        def select(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            escalations = conn.execute(
                "SELECT id, kind, reason, severity, opened_at, state, level, closed_at, acked_by, close_reason"
                " FROM escalations WHERE execution_id = ? ORDER BY opened_at, id",
                (execution_id,),
            ).fetchall()
            result = []
            for escalation in escalations:
                messages = conn.execute(
                    "SELECT channel, kind, level, attempts, created_at, next_attempt_at, delivered_at,"
                    " superseded_at, abandoned_at, last_error FROM escalation_outbox WHERE escalation_id = ?"
                    " ORDER BY id",
                    (escalation["id"],),
                ).fetchall()
                result.append({**dict(escalation), "messages": [dict(m) for m in messages]})
            return result

        return await self.read(select)

    async def open_approval(
        self, execution_id: str, step: str, prompt: str, requested_at: datetime, deadline: datetime
    ) -> ApprovalRequest:
        """The pending request for this step, or a new one: a resumed run keeps its first deadline."""

        def upsert(conn: sqlite3.Connection) -> ApprovalRequest:
            columns = "id, execution_id, step, prompt, requested_at, deadline, decided_at, decision, approver"
            row = conn.execute(
                f"SELECT {columns} FROM approvals WHERE execution_id = ? AND step = ? AND decided_at IS NULL",
                (execution_id, step),
            ).fetchone()
            if row is None:
                conn.execute(
                    "INSERT INTO approvals (execution_id, step, prompt, requested_at, deadline) VALUES (?, ?, ?, ?, ?)",
                    (execution_id, step, prompt, timestamp(requested_at), timestamp(deadline)),
                )
                row = conn.execute(
                    f"SELECT {columns} FROM approvals WHERE execution_id = ? AND decided_at IS NULL", (execution_id,)
                ).fetchone()
            return _approval(row)

        return await self.write(upsert)

    async def decide_approval(self, approval_id: int, decision: str, approver: str, at: datetime) -> bool:
        """Record the decision once: False if it was decided already."""

        def update(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute(
                "UPDATE approvals SET decided_at = ?, decision = ?, approver = ? WHERE id = ? AND decided_at IS NULL",
                (timestamp(at), decision, approver, approval_id),
            )
            return cursor.rowcount == 1

        return await self.write(update)

    async def approvals_for(self, execution_id: str) -> list[ApprovalRequest]:
        return await self.read(
            lambda conn: [
                _approval(row)
                for row in conn.execute(
                    "SELECT id, execution_id, step, prompt, requested_at, deadline, decided_at, decision, approver"
                    " FROM approvals WHERE execution_id = ? ORDER BY id",
                    (execution_id,),
                )
            ]
        )

    async def orphaned_approvals(self) -> list[ApprovalRequest]:
        """Pending requests whose execution ended without deciding them (interrupted by a restart...)."""
        terminal = ", ".join(f"'{state}'" for state in sorted(TERMINAL_STATES))
        return await self.read(
            lambda conn: [
                _approval(row)
                for row in conn.execute(
                    "SELECT a.id, a.execution_id, a.step, a.prompt, a.requested_at, a.deadline, a.decided_at,"
                    " a.decision, a.approver FROM approvals a JOIN executions x ON x.id = a.execution_id"
                    f" WHERE a.decided_at IS NULL AND x.state IN ({terminal}) ORDER BY a.id"
                )
            ]
        )
