"""What reports and pages read: one execution whole, the filtered list, the per-rule figures."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from collections.abc import Mapping
from typing import Any

from service.store.escalations import EscalationSQL
from service.store.records import ExecutionRecord
from service.store.rows import execution_row

# The same expression as the executions_rule_state_fix index, so the median is read off the index.
_FIX_SECONDS = "(julianday(finished_at) - julianday(created_at)) * 86400.0"


class ReadSQL(EscalationSQL):
    async def get_execution(self, execution_id: str) -> ExecutionRecord | None:
        def select(conn: sqlite3.Connection) -> ExecutionRecord | None:
            row = conn.execute("SELECT * FROM executions WHERE id = ?", (execution_id,)).fetchone()
            if row is None:
                return None
            steps = conn.execute(
                "SELECT * FROM execution_steps WHERE execution_id = ? ORDER BY id", (execution_id,)
            ).fetchall()
            events = conn.execute(
                "SELECT * FROM execution_events WHERE execution_id = ? ORDER BY id", (execution_id,)
            ).fetchall()
            occurrence = None
            if row["occurrence_id"] is not None:
                occurrence = conn.execute("SELECT * FROM occurrences WHERE id = ?", (row["occurrence_id"],)).fetchone()
            return ExecutionRecord(
                execution=execution_row(row),
                steps=[{**dict(s), "ok": bool(s["ok"]), "data": json.loads(s["data"])} for s in steps],
                events=[{**dict(e), "data": json.loads(e["data"])} for e in events],
                occurrence=None
                if occurrence is None
                else {
                    **dict(occurrence),
                    "labels": json.loads(occurrence["labels"]),
                    "annotations": json.loads(occurrence["annotations"]),
                },
            )

        record = await self.read(select)
        if record is None:
            return None
        approvals = [dataclasses.asdict(a) for a in await self.approvals_for(execution_id)]
        return dataclasses.replace(record, escalations=await self.escalations_for(execution_id), approvals=approvals)

    async def unmatched_alerts(self, limit: int) -> list[dict[str, Any]]:
        """The alerts no rule wanted (any delivery of), the most recently received first."""

        def select(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            rows = conn.execute(
                "SELECT alertname, fingerprint, labels, status, starts_at, first_received_at, last_received_at,"
                " receive_count FROM occurrences WHERE matched = 0 ORDER BY last_received_at DESC LIMIT ?",
                (limit,),
            ).fetchall()
            return [{**dict(row), "labels": json.loads(row["labels"])} for row in rows]

        return await self.read(select)

    async def list_executions(
        self, limit: int = 50, offset: int = 0, filters: Mapping[str, str] | None = None
    ) -> list[dict[str, Any]]:
        """Newest first. Filters: state, rule, alertname, target (exact), since/until (created_at)."""
        clauses: list[str] = []
        values: list[Any] = []
        for key, value in (filters or {}).items():
            if key in ("state", "rule", "alertname", "target", "playbook"):
                clauses.append(f"{key} = ?")
                values.append(value)
            elif key == "since":
                clauses.append("created_at >= ?")
                values.append(value)
            elif key == "until":
                clauses.append("created_at < ?")
                values.append(value)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""

        def select(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            rows = conn.execute(
                f"SELECT * FROM executions {where} ORDER BY created_at DESC, id DESC LIMIT ? OFFSET ?",
                (*values, limit, offset),
            ).fetchall()
            return [execution_row(row) for row in rows]

        return await self.read(select)

    async def outcome_counts(self) -> list[dict[str, Any]]:
        """Per rule: executions by state (the index page's figures)."""

        def select(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            rows = conn.execute(
                "SELECT rule, state, count(*) AS n FROM executions GROUP BY rule, state ORDER BY rule, state"
            ).fetchall()
            return [dict(row) for row in rows]

        return await self.read(select)

    async def rule_figures(self) -> list[dict[str, Any]]:
        """Per rule: runs (admitted), verified fixes (succeeded), escalations, refusals, and the median
        seconds from the decision to run to the verified fix (None before the first fix)."""

        def select(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            rows = conn.execute(
                "SELECT rule, sum(state != 'refused') AS runs, sum(state = 'succeeded') AS fixed,"
                " sum(state = 'escalated') AS escalated, sum(state = 'refused') AS refused"
                " FROM executions GROUP BY rule ORDER BY rule"
            ).fetchall()
            figures = []
            for row in rows:
                fixed = int(row["fixed"])
                median = None
                if fixed:
                    # the middle one, or the mean of the middle two
                    middle = conn.execute(
                        f"SELECT {_FIX_SECONDS} FROM executions WHERE rule = ? AND state = 'succeeded'"
                        f" ORDER BY {_FIX_SECONDS} LIMIT ? OFFSET ?",
                        (row["rule"], 2 - fixed % 2, (fixed - 1) // 2),
                    ).fetchall()
                    median = sum(m[0] for m in middle) / len(middle)
                figures.append({**dict(row), "median_fix_seconds": median})
            return figures

        return await self.read(select)
