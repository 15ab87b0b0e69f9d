"""What paging asks of the store: whether a target's incident is already in hand (a run active or
just verified, a page open) or already paged, and the refusals whose page waits."""

from __future__ import annotations

import sqlite3
from datetime import datetime

from service.store.engine import SQLiteEngine
from service.store.records import TargetActivity
from service.store.rows import ACTIVE_SQL
from service.times import parse_timestamp, timestamp


class PagingSQL(SQLiteEngine):
    async def target_activity(self, target: str, verified_since: datetime) -> TargetActivity | None:
        """A run acting on `target` now (any rule), else one that succeeded since `verified_since`."""
        since = timestamp(verified_since)

        def select(conn: sqlite3.Connection) -> TargetActivity | None:
            row = conn.execute(
                f"SELECT id, state FROM executions WHERE target = ? AND mode = 'enforce' AND state IN ({ACTIVE_SQL})"
                " ORDER BY created_at DESC LIMIT 1",
                (target,),
            ).fetchone()
            if row is not None:
                return TargetActivity(row[0], "running", None)
            row = conn.execute(
                "SELECT id, finished_at FROM executions WHERE target = ? AND mode = 'enforce'"
                " AND state = 'succeeded' AND finished_at > ? ORDER BY finished_at DESC LIMIT 1",
                (target, since),
            ).fetchone()
            return None if row is None else TargetActivity(row[0], "verified", parse_timestamp(row[1]))

        return await self.read(select)

    async def open_page_for_target(self, target: str) -> str | None:
        """The execution of an open failure escalation about `target` (any rule), if any."""
        return await self.read(
            lambda conn: _first(
                conn,
                "SELECT x.id FROM escalations e JOIN executions x ON x.id = e.execution_id"
                " WHERE e.state = 'open' AND e.kind = 'failed' AND x.target = ? ORDER BY e.opened_at LIMIT 1",
                (target,),
            )
        )

    async def refusal_paged_since(self, rule: str | None, target: str | None, since: datetime) -> str | None:
        """A refusal of (rule, target) that was escalated since `since` (None: any rule / target)."""
        clauses, values = ["x.state = 'refused'", "e.opened_at > ?"], [timestamp(since)]
        for column, value in (("rule", rule), ("target", target)):
            if value is not None:
                clauses.append(f"x.{column} = ?")
                values.append(value)
        return await self.read(
            lambda conn: _first(
                conn,
                "SELECT x.id FROM executions x JOIN escalations e ON e.execution_id = x.id"
                f" WHERE {' AND '.join(clauses)} ORDER BY e.opened_at LIMIT 1",
                tuple(values),
            )
        )

    async def set_page_due(self, execution_id: str, due_at: datetime | None) -> None:
        when = None if due_at is None else timestamp(due_at)
        await self.write(
            lambda conn: conn.execute("UPDATE executions SET page_due_at = ? WHERE id = ?", (when, execution_id))
        )

    async def pages_due(self, now: datetime, limit: int) -> list[str]:
        """Refusals whose waiting page is due, oldest first."""
        when = timestamp(now)
        return await self.read(
            lambda conn: [
                row[0]
                for row in conn.execute(
                    "SELECT id FROM executions WHERE page_due_at IS NOT NULL AND page_due_at <= ?"
                    " ORDER BY page_due_at LIMIT ?",
                    (when, limit),
                )
            ]
        )


def _first(conn: sqlite3.Connection, sql: str, args: tuple[object, ...]) -> str | None:
    row = conn.execute(sql, args).fetchone()
    return None if row is None else str(row[0])
