"""The commit engine: connections, ownership of the store, group commit.

SQLite in WAL mode, one file, zero set-up. Writes are group-committed: callers queue their work,
and one flush at a time runs everything queued so far in one transaction, on the event loop. Each
caller still waits for its own durable COMMIT, but concurrent posts share one fsync, and there is
exactly one writer, so `database is locked` cannot happen. The COMMIT, which waits for the fsync,
runs on the loop too while commits take under a few milliseconds (cheaper than handing each one
to a thread); after a slower one, commits go to the writer thread until one is quick again, so a
disk that stalls holds up the loop for one commit, and after that only the writes. So does the
COMMIT after requests were answered without one (re-sends from memory): the loop has other work
than waiting for the disk. Before a batch
starts, the flush yields to the loop while that brings more writes, so requests the loop is still
reading join it rather than wait out a whole commit for the next one. If any job of a batch fails,
the batch is rolled back and its jobs re-run one transaction each, so a bad job never takes its
neighbours down.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import fcntl
import os
import socket
import sqlite3
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, TypeVar

from service.store.errors import StoreError
from service.store.schema import migrate

T = TypeVar("T")


_MAX_BATCH = 256


_GATHER_TURNS = 8


_BUSY_TIMEOUT_MS = 5000


# A COMMIT that took longer than this (a slow or stalling disk) sends the next ones to the writer
# thread, off the loop; one that took less on the thread brings them back.
_LOOP_COMMIT_LIMIT_S = 0.005


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


_Job = tuple[Callable[[sqlite3.Connection], Any], "asyncio.Future[Any]"]


_Outcome = tuple[Any, BaseException | None]


def _failure(exc: BaseException) -> StoreError | BaseException:
    return StoreError(f"commit failed: {exc}") if isinstance(exc, sqlite3.Error) else exc


class SQLiteEngine:
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
        self._answered_without_commit = False
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
            await loop.run_in_executor(writer, migrate, conn)
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

    def answered_without_commit(self) -> None:
        """A request was answered on the loop without a commit (a re-send from memory): the next
        COMMIT waits for its fsync on the writer thread, so that the loop goes on answering such
        requests meanwhile instead of holding them all up for the disk."""
        self._answered_without_commit = True

    def require_writable_file(self) -> None:
        """Raise StoreError unless the store is open on the file it opened: what a commit checks
        first, for an answer given without one."""
        if self._write_conn is None:
            raise StoreError("store is closed")
        self._check_file()

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
            if self._commit_in_thread or self._answered_without_commit:
                self._answered_without_commit = False
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
