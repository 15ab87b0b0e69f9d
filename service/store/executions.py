"""Executions as the flow writes them: decisions, state transitions, steps, the timeline."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from service.store.engine import SQLiteEngine
from service.store.errors import DuplicateExecution
from service.store.records import TERMINAL_STATES, NewExecution, PriorRun, StepProcess, StepRecord
from service.store.rows import ACTIVE_SQL, insert_event, required_time
from service.times import timestamp

REPEAT_EVENTS_KEPT = 10


def _insert_execution(conn: sqlite3.Connection, execution: NewExecution, when: str, occurrence_run: int | None) -> None:
    conn.execute(
        "INSERT INTO executions (id, created_at, updated_at, rule, rule_version, playbook, playbook_version,"
        " target, occurrence_id, fingerprint, alertname, mode, params, state, reason, refusal, occurrence_run)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            execution.id,
            when,
            when,
            execution.rule,
            execution.rule_version,
            execution.playbook,
            execution.playbook_version,
            execution.target,
            execution.occurrence_id,
            execution.fingerprint,
            execution.alertname,
            execution.mode,
            json.dumps(execution.params),
            execution.state,
            execution.reason,
            execution.refusal,
            occurrence_run,
        ),
    )


class ExecutionSQL(SQLiteEngine):
    async def create_execution(self, execution: NewExecution, at: datetime) -> None:
        when = timestamp(at)

        occurrence_run = execution.occurrence_run

        def insert(conn: sqlite3.Connection) -> str | None:
            try:
                _insert_execution(conn, execution, when, occurrence_run)
            except sqlite3.IntegrityError as exc:
                if "executions.occurrence_run" not in str(exc):
                    raise
                row = conn.execute(
                    "SELECT id FROM executions WHERE rule = ? AND occurrence_id = ? AND occurrence_run = ?",
                    (execution.rule, execution.occurrence_id, occurrence_run),
                ).fetchone()
                return str(row[0])
            insert_event(conn, execution.id, when, "state", f"{execution.state}: {execution.reason}".rstrip(": "))
            return None

        existing = await self.write(insert)
        if existing is not None:
            raise DuplicateExecution(existing)

    async def set_state(self, execution_id: str, state: str, at: datetime, reason: str = "") -> None:
        """Persist a state transition (and its reason) before the work it announces starts."""
        when = timestamp(at)

        def update(conn: sqlite3.Connection) -> None:
            started = when if state == "running" else None
            finished = when if state in TERMINAL_STATES else None
            conn.execute(
                "UPDATE executions SET state = ?, reason = CASE WHEN ? = '' THEN reason ELSE ? END,"
                " updated_at = ?, started_at = COALESCE(started_at, ?), finished_at = COALESCE(?, finished_at)"
                " WHERE id = ?",
                (state, reason, reason, when, started, finished, execution_id),
            )
            insert_event(conn, execution_id, when, "state", f"{state}: {reason}" if reason else state)

        await self.write(update)

    async def add_event(
        self, execution_id: str, at: datetime, kind: str, message: str, data: Mapping[str, Any] | None = None
    ) -> None:
        when = timestamp(at)
        await self.write(lambda conn: insert_event(conn, execution_id, when, kind, message, data))

    async def add_repeat(self, execution_id: str, at: datetime, message: str) -> None:
        """A re-delivery of the alert an execution handles. The first REPEAT_EVENTS_KEPT - 1 stay on
        the timeline; after them only the latest one does (its message counts every delivery), so a
        timeline stays readable, and its size bounded, however often Alertmanager re-sends."""
        when = timestamp(at)

        def insert(conn: sqlite3.Connection) -> None:
            kept = conn.execute(
                "SELECT id FROM execution_events WHERE execution_id = ? AND kind = 'repeat' ORDER BY id DESC LIMIT ?",
                (execution_id, REPEAT_EVENTS_KEPT),
            ).fetchall()
            if len(kept) == REPEAT_EVENTS_KEPT:  # replaced, not updated: the timeline stays in time order
                conn.execute("DELETE FROM execution_events WHERE id = ?", (kept[0][0],))
            insert_event(conn, execution_id, when, "repeat", message)

        await self.write(insert)

    async def record_step(self, execution_id: str, step: StepRecord) -> None:
        def insert(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO execution_steps (execution_id, phase, name, type, attempt, started_at, duration_s, ok,"
                " status, summary, output, exit_code, data) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    execution_id,
                    step.phase,
                    step.name,
                    step.type,
                    step.attempt,
                    timestamp(step.started_at),
                    step.duration_s,
                    int(step.ok),
                    step.status,
                    step.summary,
                    step.output,
                    step.exit_code,
                    json.dumps(step.data, default=str),
                ),
            )

        await self.write(insert)

    async def record_process(self, process: StepProcess, at: datetime) -> None:
        when = timestamp(at)
        await self.write(
            lambda conn: conn.execute(
                "INSERT OR REPLACE INTO step_processes (execution_id, step, pgid, boot_id, leader_start, started_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (process.execution_id, process.step, process.pgid, process.boot_id, process.leader_start, when),
            )
        )

    async def forget_process(self, execution_id: str, pgid: int) -> None:
        await self.write(
            lambda conn: conn.execute(
                "DELETE FROM step_processes WHERE execution_id = ? AND pgid = ?", (execution_id, pgid)
            )
        )

    async def step_processes(self, execution_id: str) -> list[StepProcess]:
        """The process groups of steps that were running when the service last stopped."""
        return await self.read(
            lambda conn: [
                StepProcess(*row)
                for row in conn.execute(
                    "SELECT execution_id, step, pgid, boot_id, leader_start FROM step_processes"
                    " WHERE execution_id = ? ORDER BY started_at",
                    (execution_id,),
                )
            ]
        )

    async def occurrence_status(self, occurrence_id: int) -> str:
        def select(conn: sqlite3.Connection) -> str:
            return str(conn.execute("SELECT status FROM occurrences WHERE id = ?", (occurrence_id,)).fetchone()[0])

        return await self.read(select)

    async def active_for_occurrence(self, occurrence_id: int) -> list[tuple[str, str, str]]:
        """(id, state, playbook) of the runs still active for an occurrence."""
        return await self.read(
            lambda conn: [
                (row[0], row[1], row[2])
                for row in conn.execute(
                    f"SELECT id, state, playbook FROM executions WHERE occurrence_id = ? AND state IN ({ACTIVE_SQL})",
                    (occurrence_id,),
                )
            ]
        )

    async def active_for_target(self, rule: str, target: str) -> list[str]:
        """Ids of the runs of `rule` still active for `target` (restart mode cancels them)."""
        return await self.read(
            lambda conn: [
                row[0]
                for row in conn.execute(
                    f"SELECT id FROM executions WHERE rule = ? AND target = ? AND state IN ({ACTIVE_SQL})",
                    (rule, target),
                )
            ]
        )

    async def execution_for_occurrence(self, rule: str, occurrence_id: int) -> PriorRun | None:
        """The latest run a rule made for this alert occurrence, if any (refusals do not count)."""

        def select(conn: sqlite3.Connection) -> PriorRun | None:
            row = conn.execute(
                "SELECT id, state, created_at, occurrence_run FROM executions WHERE occurrence_id = ? AND rule = ?"
                " AND occurrence_run IS NOT NULL ORDER BY occurrence_run DESC LIMIT 1",
                (occurrence_id, rule),
            ).fetchone()
            return None if row is None else PriorRun(row[0], row[1], required_time(row[2]), row[3])

        return await self.read(select)

    async def executions_in_state(self, states: Sequence[str]) -> list[str]:
        marks = ", ".join("?" for _ in states)
        return await self.read(
            lambda conn: [
                row[0]
                for row in conn.execute(
                    f"SELECT id FROM executions WHERE state IN ({marks}) ORDER BY created_at", tuple(states)
                )
            ]
        )
