"""The store: the only module that speaks SQL.

SQLite in WAL mode, one file, zero set-up. Writes are group-committed: callers queue their work on
the event loop, and one flush at a time takes everything queued so far to the single writer thread,
runs it in one transaction and commits. Each caller still waits for its own durable COMMIT
(synchronous=FULL), but concurrent posts share one fsync and one thread hand-off, and there is exactly
one writer, so `database is locked` cannot happen. If any job of a batch fails, the batch is rolled
back and its jobs re-run one transaction each, so a bad job never takes its neighbours down.

The public surface is the `Store` protocol; a PostgreSQL implementation can follow it without
touching callers.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, TypeVar

from service.webhook import WebhookNotification

T = TypeVar("T")

_MAX_BATCH = 256
_BUSY_TIMEOUT_MS = 5000

# Versioned schema migrations, applied in order at start; PRAGMA user_version records how far.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE notifications (
            id INTEGER PRIMARY KEY,
            received_at TEXT NOT NULL,
            receiver TEXT NOT NULL,
            status TEXT NOT NULL,
            group_key TEXT NOT NULL,
            external_url TEXT NOT NULL,
            alert_count INTEGER NOT NULL,
            body TEXT NOT NULL -- exactly as received, unknown fields included
        )""",
        # An alert occurrence is Alertmanager's alert identity plus its start: re-sends share it.
        """CREATE TABLE occurrences (
            id INTEGER PRIMARY KEY,
            fingerprint TEXT NOT NULL,
            starts_at TEXT NOT NULL,
            alertname TEXT NOT NULL,
            labels TEXT NOT NULL,
            annotations TEXT NOT NULL,
            generator_url TEXT NOT NULL,
            status TEXT NOT NULL,
            ends_at TEXT,
            first_received_at TEXT NOT NULL,
            last_received_at TEXT NOT NULL,
            receive_count INTEGER NOT NULL,
            UNIQUE (fingerprint, starts_at)
        )""",
        # Every alert of every notification, in arrival order: the dispatcher's durable queue.
        # previous_status is NULL for a new occurrence and differs from status on a transition.
        """CREATE TABLE alert_events (
            id INTEGER PRIMARY KEY,
            notification_id INTEGER NOT NULL REFERENCES notifications(id),
            occurrence_id INTEGER NOT NULL REFERENCES occurrences(id),
            status TEXT NOT NULL,
            previous_status TEXT,
            dispatched_at TEXT
        )""",
        "CREATE INDEX alert_events_undispatched ON alert_events(id) WHERE dispatched_at IS NULL",
        "CREATE INDEX alert_events_occurrence ON alert_events(occurrence_id)",
    ),
)


class StoreError(Exception):
    """The store could not do what was asked (disk full, I/O error, closed): callers answer 503."""


@dataclass(frozen=True)
class NotificationReceipt:
    notification_id: int
    alert_event_ids: tuple[int, ...]


@dataclass(frozen=True)
class Occurrence:
    id: int
    fingerprint: str
    starts_at: datetime
    alertname: str
    labels: dict[str, str]
    annotations: dict[str, str]
    generator_url: str
    status: str
    ends_at: datetime | None
    receive_count: int


@dataclass(frozen=True)
class AlertEvent:
    """One alert as one notification delivered it, with its occurrence's current state."""

    id: int
    notification_id: int
    status: str
    previous_status: str | None
    occurrence: Occurrence
    common_labels: dict[str, str]
    external_url: str


class Store(Protocol):
    async def open(self) -> None: ...
    async def close(self) -> None: ...
    @property
    def is_open(self) -> bool: ...
    async def record_notification(
        self, notification: WebhookNotification, body: bytes, received_at: datetime
    ) -> NotificationReceipt: ...
    async def count_notifications(self) -> int: ...
    async def count_alert_events(self) -> int: ...
    async def undispatched_alert_events(self, limit: int) -> list[AlertEvent]: ...
    async def mark_dispatched(self, event_ids: Sequence[int], at: datetime) -> None: ...


def timestamp(value: datetime) -> str:
    """One text form for every stored time, so equal instants compare equal as text."""
    return value.astimezone(UTC).isoformat(timespec="microseconds")


def _parse_time(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=_BUSY_TIMEOUT_MS / 1000)
    conn.execute("PRAGMA journal_mode=WAL")
    # FULL: an acknowledged notification survives a crash or power loss, not only a process kill.
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
    return conn


def _migrate(conn: sqlite3.Connection) -> None:
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if version > len(MIGRATIONS):
        raise StoreError(f"store schema version {version} is newer than this remediator knows ({len(MIGRATIONS)})")
    for number, statements in enumerate(MIGRATIONS[version:], start=version + 1):
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in statements:
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version={number}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise


_Job = tuple[Callable[[sqlite3.Connection], Any], "asyncio.Future[Any]"]
_Outcome = tuple[Any, BaseException | None]


def _failure(exc: BaseException) -> StoreError | BaseException:
    return StoreError(f"commit failed: {exc}") if isinstance(exc, sqlite3.Error) else exc


def _row_to_occurrence(row: sqlite3.Row) -> Occurrence:
    starts_at = _parse_time(row["starts_at"])
    assert starts_at is not None
    return Occurrence(
        id=row["occurrence_id"],
        fingerprint=row["fingerprint"],
        starts_at=starts_at,
        alertname=row["alertname"],
        labels=json.loads(row["labels"]),
        annotations=json.loads(row["annotations"]),
        generator_url=row["generator_url"],
        status=row["occurrence_status"],
        ends_at=_parse_time(row["ends_at"]),
        receive_count=row["receive_count"],
    )


class SQLiteStore:
    def __init__(self, path: Path) -> None:
        self._path = path
        # One thread owns the write connection; reads have their own connection and thread (WAL lets
        # them overlap writes).
        self._writer: concurrent.futures.ThreadPoolExecutor | None = None
        self._write_conn: sqlite3.Connection | None = None
        self._reader: concurrent.futures.ThreadPoolExecutor | None = None
        self._read_conn: sqlite3.Connection | None = None
        self._pending: list[_Job] = []
        self._flushing: asyncio.Task[None] | None = None

    @property
    def path(self) -> Path:
        return self._path

    @property
    def is_open(self) -> bool:
        return self._write_conn is not None

    async def open(self) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        writer = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-writer")
        loop = asyncio.get_running_loop()
        try:
            conn = await loop.run_in_executor(writer, _connect, self._path)
            await loop.run_in_executor(writer, _migrate, conn)
        except sqlite3.Error as exc:
            writer.shutdown(wait=True)
            raise StoreError(f"cannot open store {self._path}: {exc}") from exc
        self._writer, self._write_conn = writer, conn
        self._reader = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-reader")

    async def close(self) -> None:
        """Finish every queued write, then close both connections."""
        while self._flushing is not None:
            await asyncio.shield(self._flushing)
        if self._writer is not None and self._write_conn is not None:
            writer, conn = self._writer, self._write_conn
            self._writer = self._write_conn = None
            await asyncio.get_running_loop().run_in_executor(writer, conn.close)
            writer.shutdown(wait=True)
        if self._reader is not None:
            reader, self._reader = self._reader, None
            if self._read_conn is not None:
                read_conn, self._read_conn = self._read_conn, None
                reader.submit(read_conn.close).result()
            reader.shutdown(wait=True)

    async def write(self, job: Callable[[sqlite3.Connection], T]) -> T:
        """Run `job` inside a committed transaction; returns once the commit is durable."""
        if self._write_conn is None:
            raise StoreError("store is closed")
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._pending.append((job, future))
        if self._flushing is None:
            self._flushing = asyncio.create_task(self._flush())
        return await future

    async def _flush(self) -> None:
        """Commit what is queued; what arrives meanwhile forms the next batch (one flush at a time)."""
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                outcomes: list[_Outcome]
                try:
                    outcomes = [(result, None) for result in await self._commit([work for work, _ in batch])]
                except Exception as exc:
                    if len(batch) == 1:
                        outcomes = [(None, _failure(exc))]
                    else:  # isolate the failing job: commit each on its own
                        outcomes = [await self._commit_alone(work) for work, _future in batch]
                for (_work, future), (result, error) in zip(batch, outcomes, strict=True):
                    if future.cancelled():
                        continue  # the caller went away; what it asked for is committed all the same
                    if error is None:
                        future.set_result(result)
                    else:
                        future.set_exception(error)
        finally:
            self._flushing = None

    async def _commit_alone(self, work: Callable[[sqlite3.Connection], Any]) -> _Outcome:
        try:
            return (await self._commit([work]))[0], None
        except Exception as exc:
            return None, _failure(exc)

    async def _commit(self, works: list[Callable[[sqlite3.Connection], Any]]) -> list[Any]:
        """Run `works` in one transaction; rolled back and re-raised if any fails.

        The statements run here on the loop (microseconds each, on pages the cache holds); only the
        COMMIT, which waits for the fsync, goes to the writer thread. One thread hand-off per batch
        instead of one per statement keeps the two threads from trading the GIL back and forth.
        """
        assert self._writer is not None and self._write_conn is not None
        conn = self._write_conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            results = [work(conn) for work in works]
            await asyncio.get_running_loop().run_in_executor(self._writer, conn.execute, "COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return results

    async def read(self, job: Callable[[sqlite3.Connection], T]) -> T:
        if self._reader is None:
            raise StoreError("store is closed")
        return await asyncio.get_running_loop().run_in_executor(self._reader, self._with_read_conn, job)

    def _with_read_conn(self, job: Callable[[sqlite3.Connection], T]) -> T:
        if self._read_conn is None:
            self._read_conn = _connect(self._path)
            self._read_conn.row_factory = sqlite3.Row
        try:
            return job(self._read_conn)
        except sqlite3.Error as exc:
            raise StoreError(f"read failed: {exc}") from exc

    async def record_notification(
        self, notification: WebhookNotification, body: bytes, received_at: datetime
    ) -> NotificationReceipt:
        received = timestamp(received_at)

        def insert(conn: sqlite3.Connection) -> NotificationReceipt:
            cursor = conn.execute(
                "INSERT INTO notifications (received_at, receiver, status, group_key, external_url, alert_count, body)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    received,
                    notification.receiver,
                    notification.status,
                    notification.groupKey,
                    notification.externalURL,
                    len(notification.alerts),
                    body.decode("utf-8"),
                ),
            )
            notification_id = cursor.lastrowid
            assert notification_id is not None
            event_ids = []
            for alert in notification.alerts:
                starts_at = timestamp(alert.startsAt)
                ends_at = None if alert.endsAt is None else timestamp(alert.endsAt)
                labels = json.dumps(alert.labels, sort_keys=True)
                annotations = json.dumps(alert.annotations, sort_keys=True)
                existing = conn.execute(
                    "SELECT id, status FROM occurrences WHERE fingerprint = ? AND starts_at = ?",
                    (alert.fingerprint, starts_at),
                ).fetchone()
                if existing is None:
                    previous_status = None
                    occurrence_id = conn.execute(
                        "INSERT INTO occurrences (fingerprint, starts_at, alertname, labels, annotations,"
                        " generator_url, status, ends_at, first_received_at, last_received_at, receive_count)"
                        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1)",
                        (
                            alert.fingerprint,
                            starts_at,
                            alert.labels.get("alertname", ""),
                            labels,
                            annotations,
                            alert.generatorURL,
                            alert.status,
                            ends_at,
                            received,
                            received,
                        ),
                    ).lastrowid
                else:
                    occurrence_id, previous_status = existing
                    conn.execute(
                        "UPDATE occurrences SET status = ?, ends_at = ?, labels = ?, annotations = ?,"
                        " last_received_at = ?, receive_count = receive_count + 1 WHERE id = ?",
                        (alert.status, ends_at, labels, annotations, received, occurrence_id),
                    )
                event_id = conn.execute(
                    "INSERT INTO alert_events (notification_id, occurrence_id, status, previous_status)"
                    " VALUES (?, ?, ?, ?)",
                    (notification_id, occurrence_id, alert.status, previous_status),
                ).lastrowid
                assert event_id is not None
                event_ids.append(event_id)
            return NotificationReceipt(notification_id, tuple(event_ids))

        return await self.write(insert)

    async def count_notifications(self) -> int:
        return await self.read(lambda conn: int(conn.execute("SELECT count(*) FROM notifications").fetchone()[0]))

    async def count_alert_events(self) -> int:
        return await self.read(lambda conn: int(conn.execute("SELECT count(*) FROM alert_events").fetchone()[0]))

    async def undispatched_alert_events(self, limit: int) -> list[AlertEvent]:
        def select(conn: sqlite3.Connection) -> list[AlertEvent]:
            rows = conn.execute(
                "SELECT e.id, e.notification_id, e.status AS event_status, e.previous_status,"
                " o.id AS occurrence_id, o.fingerprint, o.starts_at, o.alertname, o.labels, o.annotations,"
                " o.generator_url, o.status AS occurrence_status, o.ends_at, o.receive_count,"
                " n.body"
                " FROM alert_events e JOIN occurrences o ON o.id = e.occurrence_id"
                " JOIN notifications n ON n.id = e.notification_id"
                " WHERE e.dispatched_at IS NULL ORDER BY e.id LIMIT ?",
                (limit,),
            ).fetchall()
            events = []
            for row in rows:
                body = json.loads(row["body"])
                events.append(
                    AlertEvent(
                        id=row["id"],
                        notification_id=row["notification_id"],
                        status=row["event_status"],
                        previous_status=row["previous_status"],
                        occurrence=_row_to_occurrence(row),
                        common_labels=body.get("commonLabels", {}),
                        external_url=body.get("externalURL", ""),
                    )
                )
            return events

        return await self.read(select)

    async def mark_dispatched(self, event_ids: Sequence[int], at: datetime) -> None:
        when = timestamp(at)

        def update(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "UPDATE alert_events SET dispatched_at = ? WHERE id = ?", [(when, event_id) for event_id in event_ids]
            )

        await self.write(update)
