"""The store: the only module that speaks SQL.

SQLite in WAL mode, one file, zero set-up. Writes are group-committed: callers queue their work,
and one flush at a time runs everything queued so far in one transaction, on the event loop. Each
caller still waits for its own durable COMMIT, but concurrent posts share one fsync, and there is
exactly one writer, so `database is locked` cannot happen. The COMMIT, which waits for the fsync,
runs on the loop too while commits take under a few milliseconds (cheaper than handing each one
to a thread); after a slower one, commits go to the writer thread until one is quick again, so a
disk that stalls holds up the loop for one commit, and after that only the writes. Before a batch
starts, the flush yields to the loop while that brings more writes, so requests the loop is still
reading join it rather than wait out a whole commit for the next one. If any job of a batch fails,
the batch is rolled back and its jobs re-run one transaction each, so a bad job never takes its
neighbours down.

Callers use the domain methods (`record_notification`, `create_execution`, `target_history`, ...),
which take and return plain values and dataclasses: no SQL and no sqlite3 object crosses that line
(`write`/`read` are for this module, tests and benchmarks). A PostgreSQL store with the same
methods can replace this one without touching callers.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import fcntl
import functools
import json
import os
import socket
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic_core import to_json

from service.webhook import WebhookAlert, WebhookNotification

T = TypeVar("T")

_MAX_BATCH = 256
_GATHER_TURNS = 8
_BUSY_TIMEOUT_MS = 5000
# A COMMIT that took longer than this (a slow or stalling disk) sends the next ones to the writer
# thread, off the loop; one that took less on the thread brings them back.
_LOOP_COMMIT_LIMIT_S = 0.005

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
    (
        # One row per (rule, alert occurrence) decision that created a run or refused one.
        """CREATE TABLE executions (
            id TEXT PRIMARY KEY,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            rule TEXT NOT NULL,
            rule_version TEXT NOT NULL,
            playbook TEXT NOT NULL,
            playbook_version TEXT NOT NULL,
            target TEXT NOT NULL,
            occurrence_id INTEGER REFERENCES occurrences(id),
            fingerprint TEXT NOT NULL,
            alertname TEXT NOT NULL,
            mode TEXT NOT NULL,
            params TEXT NOT NULL,
            state TEXT NOT NULL,
            reason TEXT NOT NULL DEFAULT '',
            started_at TEXT,
            finished_at TEXT
        )""",
        "CREATE INDEX executions_rule_target ON executions(rule, target, created_at)",
        "CREATE INDEX executions_occurrence ON executions(occurrence_id, rule)",
        "CREATE INDEX executions_state ON executions(state)",
        "CREATE INDEX executions_created ON executions(created_at)",
        # Each attempt of each step, in order; output is already bounded by the step.
        """CREATE TABLE execution_steps (
            id INTEGER PRIMARY KEY,
            execution_id TEXT NOT NULL REFERENCES executions(id) ON DELETE CASCADE,
            phase TEXT NOT NULL,
            name TEXT NOT NULL,
            type TEXT NOT NULL,
            attempt INTEGER NOT NULL,
            started_at TEXT NOT NULL,
            duration_s REAL NOT NULL,
            ok INTEGER NOT NULL,
            status TEXT NOT NULL,
            summary TEXT NOT NULL,
            output TEXT NOT NULL,
            exit_code INTEGER,
            data TEXT NOT NULL
        )""",
        "CREATE INDEX execution_steps_execution ON execution_steps(execution_id, id)",
        # The timeline: state transitions, decisions, repeats, verification polls, escalations.
        """CREATE TABLE execution_events (
            id INTEGER PRIMARY KEY,
            execution_id TEXT NOT NULL REFERENCES executions(id) ON DELETE CASCADE,
            at TEXT NOT NULL,
            kind TEXT NOT NULL,
            message TEXT NOT NULL,
            data TEXT NOT NULL
        )""",
        "CREATE INDEX execution_events_execution ON execution_events(execution_id, id)",
    ),
    (
        # Why a run was refused, as a key (cooldown, budget_spent, storm, ...): the text is in reason.
        "ALTER TABLE executions ADD COLUMN refusal TEXT",
        "CREATE INDEX executions_refusal ON executions(rule, target, refusal, created_at)",
        # Maintenance: automation paused for a rule and/or a target ('*' is every one).
        """CREATE TABLE pauses (
            id INTEGER PRIMARY KEY,
            rule TEXT NOT NULL,
            target TEXT NOT NULL,
            reason TEXT NOT NULL,
            created_by TEXT NOT NULL,
            created_at TEXT NOT NULL,
            until TEXT,
            cleared_at TEXT
        )""",
        # A person resetting a tripped budget (and cooldown) for (rule, target).
        """CREATE TABLE limit_resets (
            id INTEGER PRIMARY KEY,
            rule TEXT NOT NULL,
            target TEXT NOT NULL,
            reset_by TEXT NOT NULL,
            reset_at TEXT NOT NULL
        )""",
        "CREATE INDEX limit_resets_rule_target ON limit_resets(rule, target, reset_at)",
    ),
    (
        # The storm guard counts admitted runs in its window and asks whether a storm refusal was
        # already escalated: both must stay cheap while a storm writes thousands of refused rows.
        "CREATE INDEX executions_admitted ON executions(created_at) WHERE state != 'refused' AND mode = 'enforce'",
        "CREATE INDEX executions_refusal_time ON executions(refusal, created_at)",
    ),
    (
        # Escalations (service/escalation.py): one row each time a person must be told about an
        # execution; kind decides the alert (failed | approval); level is the last level notified.
        """CREATE TABLE escalations (
            id TEXT PRIMARY KEY,
            execution_id TEXT NOT NULL REFERENCES executions(id) ON DELETE CASCADE,
            kind TEXT NOT NULL,
            reason TEXT NOT NULL,
            severity TEXT NOT NULL,
            opened_at TEXT NOT NULL,
            state TEXT NOT NULL, -- open | acknowledged | closed
            level INTEGER NOT NULL,
            facts TEXT NOT NULL, -- what the messages say, fixed when it opened
            closed_at TEXT,
            acked_by TEXT,
            close_reason TEXT
        )""",
        "CREATE INDEX escalations_open ON escalations(execution_id) WHERE state = 'open'",
        # One row per message per channel; dedup_key makes "once per level per channel" a constraint.
        """CREATE TABLE escalation_outbox (
            id INTEGER PRIMARY KEY,
            escalation_id TEXT NOT NULL REFERENCES escalations(id) ON DELETE CASCADE,
            dedup_key TEXT NOT NULL UNIQUE,
            channel TEXT NOT NULL,
            kind TEXT NOT NULL, -- notify | close
            level INTEGER NOT NULL,
            payload TEXT NOT NULL,
            created_at TEXT NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at TEXT NOT NULL,
            delivered_at TEXT,
            superseded_at TEXT, -- the escalation closed before this was sent
            abandoned_at TEXT, -- retries spent
            last_error TEXT NOT NULL DEFAULT ''
        )""",
        """CREATE INDEX escalation_outbox_due ON escalation_outbox(next_attempt_at)
            WHERE delivered_at IS NULL AND superseded_at IS NULL AND abandoned_at IS NULL""",
        "CREATE INDEX escalation_outbox_escalation ON escalation_outbox(escalation_id)",
        # Approval requests outlive the process that waits on them; one pending per execution.
        """CREATE TABLE approvals (
            id INTEGER PRIMARY KEY,
            execution_id TEXT NOT NULL REFERENCES executions(id) ON DELETE CASCADE,
            step TEXT NOT NULL,
            prompt TEXT NOT NULL,
            requested_at TEXT NOT NULL,
            deadline TEXT NOT NULL,
            decided_at TEXT,
            decision TEXT, -- approved | denied | expired
            approver TEXT
        )""",
        "CREATE UNIQUE INDEX approvals_pending ON approvals(execution_id) WHERE decided_at IS NULL",
    ),
    (
        # The pages (service/pages.py) with 100,000 executions: each index filter reads its page off an
        # index already in the list's order (created_at DESC, id DESC), deep offsets skip index entries
        # only, and the per-rule figures count (rule, state) and take the median time to a verified
        # fix from one covering index (its expression is store._FIX_SECONDS, character for character).
        "CREATE INDEX executions_created_id ON executions(created_at, id)",
        "CREATE INDEX executions_state_created ON executions(state, created_at, id)",
        "CREATE INDEX executions_rule_created ON executions(rule, created_at, id)",
        "CREATE INDEX executions_target_created ON executions(target, created_at, id)",
        "CREATE INDEX executions_alertname_created ON executions(alertname, created_at, id)",
        """CREATE INDEX executions_rule_state_fix
            ON executions(rule, state, (julianday(finished_at) - julianday(created_at)) * 86400.0)""",
    ),
    (
        # The status before the latest delivery (NULL until a second one): one UPSERT ... RETURNING
        # both records a delivery and says whether it was a transition, instead of a SELECT first.
        "ALTER TABLE occurrences ADD COLUMN previous_status TEXT",
        # Only the hourly prune asked alert_events by occurrence, and it does without: one B-tree
        # less to update for every alert received.
        "DROP INDEX alert_events_occurrence",
    ),
    (
        # The database refuses a second run for the same (rule, alert occurrence), whatever raced to
        # make it: occurrence_run numbers a rule's runs of one occurrence (1, then 2 for a rerun_after
        # ...); refusals have none (NULLs are distinct in a UNIQUE index). Existing rows are numbered
        # in creation order.
        "ALTER TABLE executions ADD COLUMN occurrence_run INTEGER",
        """UPDATE executions SET occurrence_run = (
            SELECT n FROM (
                SELECT id, row_number() OVER (PARTITION BY rule, occurrence_id ORDER BY created_at, id) AS n
                FROM executions WHERE state != 'refused' AND occurrence_id IS NOT NULL
            ) numbered WHERE numbered.id = executions.id
        )""",
        "CREATE UNIQUE INDEX executions_one_run_per_occurrence ON executions(rule, occurrence_id, occurrence_run)",
    ),
)


class StoreError(Exception):
    """The store could not do what was asked (disk full, I/O error, closed): callers answer 503."""


class DuplicateExecution(StoreError):
    """The rule already has this run of the alert occurrence: another decision made it first."""

    def __init__(self, existing_id: str) -> None:
        super().__init__(f"the occurrence already has this run: execution {existing_id}")
        self.existing_id = existing_id


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
    """One alert as one notification delivered it, with its occurrence as that delivery left it."""

    id: int
    notification_id: int
    status: str
    previous_status: str | None
    occurrence: Occurrence
    common_labels: dict[str, str]
    external_url: str


@dataclass(frozen=True)
class NotificationReceipt:
    """What one committed notification became: its row, how many alerts it held, and the events
    the dispatcher has to see (those stored as already dispatched are not among them)."""

    notification_id: int
    alert_count: int
    events: tuple[AlertEvent, ...]


_INSERT_NOTIFICATION = (
    "INSERT INTO notifications (received_at, receiver, status, group_key, external_url, alert_count, body)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)"
)
# A re-send of a known occurrence updates it; previous_status = status keeps the status before this
# delivery, since SET reads the row as it was.
_UPSERT_OCCURRENCE = (
    "INSERT INTO occurrences (fingerprint, starts_at, alertname, labels, annotations, generator_url, status,"
    " ends_at, first_received_at, last_received_at, receive_count) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1)"
    " ON CONFLICT (fingerprint, starts_at) DO UPDATE SET previous_status = status, status = excluded.status,"
    " ends_at = excluded.ends_at, labels = excluded.labels, annotations = excluded.annotations,"
    " last_received_at = excluded.last_received_at, receive_count = receive_count + 1"
    " RETURNING id, previous_status, receive_count"
)
_INSERT_ALERT_EVENT = (
    "INSERT INTO alert_events (notification_id, occurrence_id, status, previous_status, dispatched_at)"
    " VALUES (?, ?, ?, ?, ?)"
)


def timestamp(value: datetime) -> str:
    """One text form for every stored time, so equal instants compare equal as text."""
    return value.astimezone(UTC).isoformat(timespec="microseconds")


@functools.lru_cache(maxsize=4096)
def _alert_time(value: datetime) -> tuple[datetime, str]:
    """An alert's time in UTC, and as stored. Cached: Alertmanager re-sends an alert's times with
    every notification of its group, and formatting one costs more than its cache lookup."""
    utc = value.astimezone(UTC)
    return utc, timestamp(utc)


def _parse_time(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


Synchronous = Literal["full", "normal"]


def _connect(
    path: Path, synchronous: Synchronous = "full", busy_timeout_ms: int = _BUSY_TIMEOUT_MS
) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=busy_timeout_ms / 1000)
    conn.execute("PRAGMA journal_mode=WAL")
    # full: every commit is fsynced, so an acknowledged notification survives power loss too.
    # normal: survives a crash of the service, but the last commits may roll back on power loss.
    conn.execute(f"PRAGMA synchronous={synchronous.upper()}")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute(f"PRAGMA busy_timeout={busy_timeout_ms}")
    return conn


def _begin_waiting(conn: sqlite3.Connection) -> None:
    """BEGIN IMMEDIATE, waiting up to the busy timeout for another connection's write lock (on the
    writer thread: the write connection never waits on the loop)."""
    conn.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
    try:
        conn.execute("BEGIN IMMEDIATE")
    finally:
        conn.execute("PRAGMA busy_timeout=0")


def _is_busy(exc: sqlite3.Error) -> bool:
    return getattr(exc, "sqlite_errorcode", None) in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


class _Ownership:
    """One process owns a store: an exclusive lock on `<store>.lock`, held from open to close (the
    kernel drops it when the process dies, so a crash never leaves a stale owner). Who holds it is
    written inside, for the message a second process gets. A separate file, since SQLite's own
    locks on the database file are byte-range locks this must not disturb."""

    def __init__(self, store_path: Path) -> None:
        self._store_path = store_path
        self._path = store_path.with_name(store_path.name + ".lock")
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 512, 0).decode("utf-8", "replace").strip() or "another process"
            os.close(fd)
            raise StoreError(
                f"store {self._store_path} is owned by {holder}: one remediator process owns a store;"
                " stop that one, or give this one another store.path"
            ) from None
        since = datetime.now(UTC).isoformat(timespec="seconds")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"remediator pid {os.getpid()} on {socket.gethostname()} since {since}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)  # releases the lock; the file stays (removing it would race a new owner)


def _file_identity(path: Path) -> tuple[int, int]:
    stat = os.stat(path)
    return stat.st_dev, stat.st_ino


def _require_writable(path: Path) -> None:
    """The store's file and its folder (WAL's -wal and -shm files live there) take writes. Checked
    with access(2), which also says no to root on a read-only mount or an immutable file."""
    for place in (path, path.parent):
        if not os.access(place, os.W_OK):
            raise StoreError(f"store {path} is not writable ({place} refuses writes): the service needs to write it")


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
    def __init__(
        self, path: Path, synchronous: Synchronous = "full", *, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        """`monotonic` times each COMMIT (see `_LOOP_COMMIT_LIMIT_S`); a test passes one to fake a slow disk."""
        self._path = path
        self._synchronous = synchronous
        # The write connection is used by one side at a time: the loop for statements and quick
        # commits, the writer thread for opening, closing and slow commits. Reads have their own
        # connection and thread (WAL lets them overlap writes).
        self._writer: concurrent.futures.ThreadPoolExecutor | None = None
        self._write_conn: sqlite3.Connection | None = None
        self._reader: concurrent.futures.ThreadPoolExecutor | None = None
        self._read_conn: sqlite3.Connection | None = None
        self._pending: list[_Job] = []
        self._flushing: asyncio.Task[None] | None = None
        self._commit_in_thread = False
        self._monotonic = monotonic
        self._ownership: _Ownership | None = None
        self._identity: tuple[int, int] = (0, 0)
        self._last_commit_error: str | None = None

    @property
    def path(self) -> Path:
        return self._path

    @property
    def is_open(self) -> bool:
        return self._write_conn is not None

    @property
    def commits_in_thread(self) -> bool:
        """Whether the next COMMIT goes to the writer thread (the last one was slow)."""
        return self._commit_in_thread

    async def open(self, *, own: bool = True) -> None:
        """Open the store. The service owns it (`own`): the ownership lock, migrations, writes. A
        reader (`remediator report` beside a running service) only reads what is there."""
        self._reader = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-reader")
        if not own:
            return
        ownership = _Ownership(self._path)
        writer = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-writer")
        loop = asyncio.get_running_loop()
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            ownership.acquire()
            # busy timeout 0: statements run on the loop, where waiting for a lock would freeze
            # every request; a BEGIN that finds the lock taken waits on the writer thread instead
            conn = await loop.run_in_executor(writer, _connect, self._path, self._synchronous, 0)
            await loop.run_in_executor(writer, _migrate, conn)
            self._identity = _file_identity(self._path)
            _require_writable(self._path)
        except (sqlite3.Error, OSError, StoreError) as exc:
            ownership.release()
            writer.shutdown(wait=True)
            self._reader.shutdown(wait=True)
            self._reader = None
            if isinstance(exc, StoreError):
                raise
            raise StoreError(f"cannot open store {self._path}: {exc}") from exc
        self._writer, self._write_conn, self._ownership = writer, conn, ownership

    def problem(self) -> str | None:
        """Why the store cannot take writes now (None when it can): /-/ready reports it."""
        if self._write_conn is None:
            return "the store is not open"
        try:
            self._check_file()
            _require_writable(self._path)
        except StoreError as exc:
            return str(exc)
        return self._last_commit_error

    def _check_file(self) -> None:
        """The path still names the file this store opened: writes to a deleted or replaced file
        would be acknowledged and then lost."""
        try:
            same = _file_identity(self._path) == self._identity
        except OSError:
            same = False
        if not same:
            raise StoreError(
                f"store file {self._path} was deleted or replaced while open: restart the service to use the new file"
            )

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
        if self._ownership is not None:
            ownership, self._ownership = self._ownership, None
            ownership.release()

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
                await self._gather()
                batch, self._pending = self._pending[:_MAX_BATCH], self._pending[_MAX_BATCH:]
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

    async def _gather(self) -> None:
        """Let the requests the loop is already reading join this commit: yield to the loop while
        each turn adds writes (a few turns at most). Under load a commit and its fsync then serve
        many more requests; when idle the first turn adds nothing."""
        for _ in range(_GATHER_TURNS):
            queued = len(self._pending)
            await asyncio.sleep(0)
            if len(self._pending) == queued or len(self._pending) >= _MAX_BATCH:
                return

    async def _commit_alone(self, work: Callable[[sqlite3.Connection], Any]) -> _Outcome:
        try:
            return (await self._commit([work]))[0], None
        except Exception as exc:
            return None, _failure(exc)

    async def _commit(self, works: list[Callable[[sqlite3.Connection], Any]]) -> list[Any]:
        """Run `works` in one transaction; rolled back and re-raised if any fails.

        The statements run here on the loop (microseconds each, on pages the cache holds), and so
        does the COMMIT while commits are quick: handing it to a thread costs the wake-up, the GIL
        trading and the loop's wake-up again, more than a fast fsync. See `_LOOP_COMMIT_LIMIT_S`.
        """
        assert self._writer is not None and self._write_conn is not None
        conn = self._write_conn
        self._check_file()
        try:
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc):
                    raise
                # another connection (a person's sqlite3 shell) holds the write lock: wait off the loop
                await asyncio.get_running_loop().run_in_executor(self._writer, _begin_waiting, conn)
            results = [work(conn) for work in works]
            started = self._monotonic()
            if self._commit_in_thread:
                await asyncio.get_running_loop().run_in_executor(self._writer, conn.execute, "COMMIT")
            else:
                conn.execute("COMMIT")
            self._commit_in_thread = self._monotonic() - started > _LOOP_COMMIT_LIMIT_S
        except BaseException as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.OperationalError | sqlite3.DatabaseError) and not isinstance(
                exc, sqlite3.IntegrityError
            ):
                self._last_commit_error = f"the last commit failed: {exc}"
            raise
        self._last_commit_error = None
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
        self,
        notification: WebhookNotification,
        body: bytes,
        received_at: datetime,
        wanted: Sequence[bool] | None = None,
    ) -> NotificationReceipt:
        """Store the notification and each alert's delivery. ``wanted[i]`` says whether a rule wants
        alert i (None: assume every one): an alert no rule wants, and which is not a firing ->
        resolved transition, has nothing to dispatch and is stored as dispatched at receipt."""
        received = timestamp(received_at)
        notification_row = (
            received,
            notification.receiver,
            notification.status,
            notification.groupKey,
            notification.externalURL,
            len(notification.alerts),
            body.decode("utf-8"),
        )
        # Everything but the statements is prepared before the transaction: a batch's statements
        # then run back to back, and a batch re-run after a neighbour failed repeats only them.
        if wanted is None:
            wanted = [True] * len(notification.alerts)
        occurrences: list[tuple[WebhookAlert, datetime, datetime | None, tuple[Any, ...], bool]] = []
        for alert, rule_wants in zip(notification.alerts, wanted, strict=True):
            starts_at, starts_at_text = _alert_time(alert.startsAt)
            ended = alert.ends_at
            ends_at, ends_at_text = (None, None) if ended is None else _alert_time(ended)
            row = (
                alert.fingerprint,
                starts_at_text,
                alert.labels.get("alertname", ""),
                # pydantic's encoder: a fifth of json.dumps's time; keys stay in the order received
                # (sorted, from Alertmanager: Go marshals maps sorted)
                to_json(alert.labels).decode(),
                to_json(alert.annotations).decode(),
                alert.generatorURL,
                alert.status,
                ends_at_text,
                received,
                received,
            )
            occurrences.append((alert, starts_at, ends_at, row, rule_wants))

        def insert(conn: sqlite3.Connection) -> NotificationReceipt:
            notification_id = conn.execute(_INSERT_NOTIFICATION, notification_row).lastrowid
            assert notification_id is not None
            events = []
            for alert, starts_at, ends_at, row, rule_wants in occurrences:
                occurrence_id, previous_status, receive_count = conn.execute(_UPSERT_OCCURRENCE, row).fetchone()
                pending = rule_wants or (alert.status == "resolved" and previous_status == "firing")
                event_id = conn.execute(
                    _INSERT_ALERT_EVENT,
                    (notification_id, occurrence_id, alert.status, previous_status, None if pending else received),
                ).lastrowid
                assert event_id is not None
                if not pending:
                    continue
                occurrence = Occurrence(
                    id=occurrence_id,
                    fingerprint=alert.fingerprint,
                    starts_at=starts_at,
                    alertname=alert.labels.get("alertname", ""),
                    labels=alert.labels,
                    annotations=alert.annotations,
                    generator_url=alert.generatorURL,
                    status=alert.status,
                    ends_at=ends_at,
                    receive_count=receive_count,
                )
                events.append(
                    AlertEvent(
                        id=event_id,
                        notification_id=notification_id,
                        status=alert.status,
                        previous_status=previous_status,
                        occurrence=occurrence,
                        common_labels=notification.commonLabels,
                        external_url=notification.externalURL,
                    )
                )
            return NotificationReceipt(notification_id, len(occurrences), tuple(events))

        return await self.write(insert)

    async def count_notifications(self) -> int:
        return await self.read(lambda conn: int(conn.execute("SELECT count(*) FROM notifications").fetchone()[0]))

    async def count_alert_events(self) -> int:
        return await self.read(lambda conn: int(conn.execute("SELECT count(*) FROM alert_events").fetchone()[0]))

    async def undispatched_alert_events(self, limit: int, after: int = 0) -> list[AlertEvent]:
        """The oldest `limit` events not yet dispatched whose id is above `after`."""

        def select(conn: sqlite3.Connection) -> list[AlertEvent]:
            rows = conn.execute(
                "SELECT e.id, e.notification_id, e.status AS event_status, e.previous_status,"
                " o.id AS occurrence_id, o.fingerprint, o.starts_at, o.alertname, o.labels, o.annotations,"
                " o.generator_url, o.status AS occurrence_status, o.ends_at, o.receive_count,"
                " n.body"
                " FROM alert_events e JOIN occurrences o ON o.id = e.occurrence_id"
                " JOIN notifications n ON n.id = e.notification_id"
                " WHERE e.dispatched_at IS NULL AND e.id > ? ORDER BY e.id LIMIT ?",
                (after, limit),
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

    # --- executions ------------------------------------------------------------------------------

    async def create_execution(self, execution: NewExecution, at: datetime) -> None:
        when = timestamp(at)

        occurrence_run = None if execution.state == "refused" else execution.occurrence_run

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
            _insert_event(conn, execution.id, when, "state", f"{execution.state}: {execution.reason}".rstrip(": "))
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
            _insert_event(conn, execution_id, when, "state", f"{state}: {reason}" if reason else state)

        await self.write(update)

    async def add_event(
        self, execution_id: str, at: datetime, kind: str, message: str, data: Mapping[str, Any] | None = None
    ) -> None:
        when = timestamp(at)
        await self.write(lambda conn: _insert_event(conn, execution_id, when, kind, message, data))

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
            _insert_event(conn, execution_id, when, "repeat", message)

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
                    f"SELECT id, state, playbook FROM executions WHERE occurrence_id = ? AND state IN ({_ACTIVE_SQL})",
                    (occurrence_id,),
                )
            ]
        )

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
            occurrences = conn.execute(
                "DELETE FROM occurrences WHERE last_received_at < ?"
                " AND id NOT IN (SELECT occurrence_id FROM executions WHERE occurrence_id IS NOT NULL)"
                " AND id NOT IN (SELECT occurrence_id FROM alert_events)",
                (cutoff,),
            ).rowcount
            notifications = conn.execute(
                "DELETE FROM notifications WHERE received_at < ?"
                " AND id NOT IN (SELECT notification_id FROM alert_events)",
                (cutoff,),
            ).rowcount
            return PruneResult(executions, events, occurrences, notifications)

        return await self.write(delete)

    async def active_for_target(self, rule: str, target: str) -> list[str]:
        """Ids of the runs of `rule` still active for `target` (restart mode cancels them)."""
        return await self.read(
            lambda conn: [
                row[0]
                for row in conn.execute(
                    f"SELECT id FROM executions WHERE rule = ? AND target = ? AND state IN ({_ACTIVE_SQL})",
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
            return None if row is None else PriorRun(row[0], row[1], datetime.fromisoformat(row[2]), row[3])

        return await self.read(select)

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
                f"SELECT count(*) FROM executions WHERE rule = ? AND target = ? AND state IN ({_ACTIVE_SQL})",
                (rule, target),
            ).fetchone()[0]
            last = conn.execute(
                "SELECT max(created_at) FROM executions WHERE rule = ? AND target = ? AND state != 'refused'"
                " AND mode = 'enforce' AND created_at > ?",
                (rule, target, reset or ""),
            ).fetchone()[0]
            return TargetHistory(runs, _parse_time(last), active)

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
                execution=_execution_row(row),
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
            return [_execution_row(row) for row in rows]

        return await self.read(select)

    async def outcome_counts(self) -> list[dict[str, Any]]:
        """Per rule: executions by state (the index page's figures)."""

        def select(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            rows = conn.execute(
                "SELECT rule, state, count(*) AS n FROM executions GROUP BY rule, state ORDER BY rule, state"
            ).fetchall()
            return [dict(row) for row in rows]

        return await self.read(select)

    # --- pages (issue 7): the index page's per-rule figures -------------------------------------

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

    # --- escalations (service/escalation.py: escalations, their delivery outbox, approvals) ------

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
            _insert_event(conn, escalation.execution_id, when, "escalation", escalation.reason, event)

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
            _insert_event(conn, row[0], when, "escalation", note, data)
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
            _insert_event(
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
                    opened_at=_required_time(r["opened_at"]),
                    level=r["level"],
                    facts=json.loads(r["facts"]),
                    occurrence_id=r["occurrence_id"],
                    occurrence_status=r["occurrence_status"],
                    occurrence_seen_at=_parse_time(r["last_received_at"]),
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
            lambda conn: _parse_time(
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
            _insert_event(conn, delivery.execution_id, when, "delivery", note, _delivery_data(delivery))

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
                _insert_event(conn, delivery.execution_id, when, "delivery", note, data)

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


# The same expression as the executions_rule_state_fix index, so the median is read off the index.
_FIX_SECONDS = "(julianday(finished_at) - julianday(created_at)) * 86400.0"

REPEAT_EVENTS_KEPT = 10
TERMINAL_STATES = frozenset({"succeeded", "failed", "escalated", "refused", "cancelled", "interrupted"})
ACTIVE_STATES = ("queued", "running", "verifying", "awaiting_approval")
_ACTIVE_SQL = ", ".join(f"'{state}'" for state in ACTIVE_STATES)


@dataclass(frozen=True)
class NewExecution:
    id: str
    rule: str
    rule_version: str
    playbook: str
    playbook_version: str
    target: str
    occurrence_id: int | None
    fingerprint: str
    alertname: str
    mode: str  # enforce | shadow | dry_run
    params: Mapping[str, Any]
    state: str
    reason: str = ""
    refusal: str | None = None  # the refusal's key when state is refused
    # Which run of this rule for this occurrence (1, then 2 after a rerun_after ...): the store
    # refuses a second execution with the same number. Refusals have none.
    occurrence_run: int | None = 1


@dataclass(frozen=True)
class StepRecord:
    phase: str  # steps | verify | on_failure
    name: str
    type: str
    attempt: int
    started_at: datetime
    duration_s: float
    ok: bool
    status: str
    summary: str
    output: str
    exit_code: int | None
    data: Mapping[str, Any]


@dataclass(frozen=True)
class PruneResult:
    executions: int
    alert_events: int
    occurrences: int
    notifications: int


@dataclass(frozen=True)
class PriorRun:
    id: str
    state: str
    created_at: datetime
    occurrence_run: int


@dataclass(frozen=True)
class TargetHistory:
    runs_in_window: int
    last_run_at: datetime | None
    active: int


@dataclass(frozen=True)
class ExecutionRecord:
    execution: dict[str, Any]
    steps: list[dict[str, Any]]
    events: list[dict[str, Any]]
    occurrence: dict[str, Any] | None
    escalations: list[dict[str, Any]] = field(default_factory=list)
    approvals: list[dict[str, Any]] = field(default_factory=list)


def _execution_row(row: sqlite3.Row) -> dict[str, Any]:
    return {**dict(row), "params": json.loads(row["params"])}


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


def _insert_event(
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


# --- escalations -------------------------------------------------------------------------------

_OUTBOX_PENDING = "delivered_at IS NULL AND superseded_at IS NULL AND abandoned_at IS NULL"


@dataclass(frozen=True)
class NewEscalation:
    id: str
    execution_id: str
    kind: str  # failed | approval
    reason: str
    severity: str
    opened_at: datetime
    facts: Mapping[str, Any]


@dataclass(frozen=True)
class OutboxMessage:
    dedup_key: str  # unique: a second copy of the same level's message to a channel is never queued
    channel: str
    kind: str  # notify | close
    level: int
    payload: Mapping[str, Any]


@dataclass(frozen=True)
class OpenEscalation:
    id: str
    execution_id: str
    kind: str
    reason: str
    severity: str
    opened_at: datetime
    level: int
    facts: dict[str, Any]
    occurrence_id: int | None
    occurrence_status: str | None
    occurrence_seen_at: datetime | None  # when the alert's last notification arrived


@dataclass(frozen=True)
class Delivery:
    id: int
    escalation_id: str
    execution_id: str
    dedup_key: str
    channel: str
    kind: str
    level: int
    payload: dict[str, Any]
    attempts: int


@dataclass(frozen=True)
class ApprovalRequest:
    id: int
    execution_id: str
    step: str
    prompt: str
    requested_at: datetime
    deadline: datetime
    decided_at: datetime | None
    decision: str | None  # approved | denied | expired
    approver: str | None


def _required_time(value: str) -> datetime:
    parsed = _parse_time(value)
    assert parsed is not None
    return parsed


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
        requested_at=_required_time(row[4]),
        deadline=_required_time(row[5]),
        decided_at=_parse_time(row[6]),
        decision=row[7],
        approver=row[8],
    )
