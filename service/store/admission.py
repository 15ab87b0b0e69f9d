"""What admission asks of the store (history per rule and target, refusals, the storm window) and
what people change about it (pauses, limit resets)."""

from __future__ import annotations

import sqlite3
from datetime import datetime
from typing import Any

from service.store.engine import SQLiteEngine
from service.store.records import TargetHistory
from service.store.rows import ACTIVE_SQL
from service.times import parse_timestamp, timestamp


class AdmissionSQL(SQLiteEngine):
    async def target_history(self, rule: str, target: str, since: datetime) -> TargetHistory:
        """What admission needs for (rule, target): runs in the window, the last start, runs active now.

        A person's reset of the limits counts as the start of the window (budget and cooldown clear).
        """
        window_start = timestamp(since)

        def select(conn: sqlite3.Connection) -> TargetHistory:
            reset = conn.execute(
                "SELECT max(reset_at) FROM limit_resets WHERE rule = ? AND target = ?", (rule, target)
            ).fetchone()[0]
            start = max(window_start, reset) if reset else window_start
            runs = conn.execute(
                "SELECT count(*) FROM executions WHERE rule = ? AND target = ?"
                " AND created_at > ? AND state != 'refused' AND mode = 'enforce'",
                (rule, target, start),
            ).fetchone()[0]
            active = conn.execute(
                f"SELECT count(*) FROM executions WHERE rule = ? AND target = ? AND state IN ({ACTIVE_SQL})",
                (rule, target),
            ).fetchone()[0]
            last = conn.execute(
                "SELECT max(created_at) FROM executions WHERE rule = ? AND target = ? AND state != 'refused'"
                " AND mode = 'enforce' AND created_at > ?",
                (rule, target, reset or ""),
            ).fetchone()[0]
            return TargetHistory(runs, parse_timestamp(last), active)

        return await self.read(select)

    async def count_refusals(
        self, rule: str | None, target: str | None, refusal: str, since: datetime, cap: int
    ) -> int:
        """Refusals with this key since `since` (for one rule and target, or across all with None),
        counted up to `cap`: callers ask "is this the first?", which must not scan a whole storm."""
        clauses, values = ["refusal = ?", "created_at > ?"], [refusal, timestamp(since)]
        if rule is not None:
            clauses.append("rule = ?")
            values.append(rule)
        if target is not None:
            clauses.append("target = ?")
            values.append(target)
        where = " AND ".join(clauses)
        return await self.read(
            lambda conn: int(
                conn.execute(
                    f"SELECT count(*) FROM (SELECT 1 FROM executions WHERE {where} LIMIT ?)", (*values, cap)
                ).fetchone()[0]
            )
        )

    async def admissions_since(self, since: datetime) -> int:
        """Runs admitted (not refused) across all rules since `since`: the storm guard's measure."""
        window_start = timestamp(since)
        return await self.read(
            lambda conn: int(
                conn.execute(
                    "SELECT count(*) FROM executions WHERE created_at > ? AND state != 'refused' AND mode = 'enforce'",
                    (window_start,),
                ).fetchone()[0]
            )
        )

    async def reset_limits(self, rule: str, target: str, by: str, at: datetime) -> None:
        when = timestamp(at)
        await self.write(
            lambda conn: conn.execute(
                "INSERT INTO limit_resets (rule, target, reset_by, reset_at) VALUES (?, ?, ?, ?)",
                (rule, target, by, when),
            )
        )

    async def add_pause(
        self, rule: str, target: str, reason: str, by: str, at: datetime, until: datetime | None
    ) -> int:
        when, end = timestamp(at), None if until is None else timestamp(until)

        def insert(conn: sqlite3.Connection) -> int:
            cursor = conn.execute(
                "INSERT INTO pauses (rule, target, reason, created_by, created_at, until) VALUES (?, ?, ?, ?, ?, ?)",
                (rule, target, reason, by, when, end),
            )
            assert cursor.lastrowid is not None
            return cursor.lastrowid

        return await self.write(insert)

    async def clear_pause(self, pause_id: int, at: datetime) -> bool:
        when = timestamp(at)
        return await self.write(
            lambda conn: (
                conn.execute(
                    "UPDATE pauses SET cleared_at = ? WHERE id = ? AND cleared_at IS NULL", (when, pause_id)
                ).rowcount
                == 1
            )
        )

    async def active_pauses(self, at: datetime) -> list[dict[str, Any]]:
        when = timestamp(at)
        return await self.read(
            lambda conn: [
                dict(row)
                for row in conn.execute(
                    "SELECT * FROM pauses WHERE cleared_at IS NULL AND (until IS NULL OR until > ?) ORDER BY id",
                    (when,),
                )
            ]
        )
