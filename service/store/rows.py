"""Small helpers the SQL modules share: the stored text of a time, rows to values, the timeline insert."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from service.store.records import ACTIVE_STATES


def timestamp(value: datetime) -> str:
    """One text form for every stored time, so equal instants compare equal as text."""
    return value.astimezone(UTC).isoformat(timespec="microseconds")


def parse_time(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def required_time(value: str) -> datetime:
    parsed = parse_time(value)
    assert parsed is not None
    return parsed


ACTIVE_SQL = ", ".join(f"'{state}'" for state in ACTIVE_STATES)


def execution_row(row: sqlite3.Row) -> dict[str, Any]:
    return {**dict(row), "params": json.loads(row["params"])}


def insert_event(
    conn: sqlite3.Connection,
    execution_id: str,
    when: str,
    kind: str,
    message: str,
    data: Mapping[str, Any] | None = None,
) -> None:
    conn.execute(
        "INSERT INTO execution_events (execution_id, at, kind, message, data) VALUES (?, ?, ?, ?, ?)",
        (execution_id, when, kind, message, json.dumps(data or {}, default=str)),
    )
