"""Small helpers the SQL modules share: stored times (service.times), rows to values, the timeline insert."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from service.store.records import ACTIVE_STATES, Occurrence
from service.times import parse_timestamp


def required_time(value: str) -> datetime:
    """A NOT NULL time column."""
    parsed = parse_timestamp(value)
    assert parsed is not None
    return parsed


ACTIVE_SQL = ", ".join(f"'{state}'" for state in ACTIVE_STATES)


def occurrence_row(row: sqlite3.Row) -> Occurrence:
    """An occurrence from a row of `occurrences` selected with `id AS occurrence_id` and
    `status AS occurrence_status` (so a join with alert_events can name both)."""
    return Occurrence(
        id=row["occurrence_id"],
        fingerprint=row["fingerprint"],
        starts_at=required_time(row["starts_at"]),
        alertname=row["alertname"],
        labels=json.loads(row["labels"]),
        annotations=json.loads(row["annotations"]),
        generator_url=row["generator_url"],
        status=row["occurrence_status"],
        ends_at=parse_timestamp(row["ends_at"]),
        receive_count=row["receive_count"],
        source=row["source"],
    )


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
