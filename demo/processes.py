"""Processes and HTTP for the demo stack and the tests: start a server with its output in a log file,
stop it by PID (TERM, then KILL), poll with a deadline, and talk JSON to loopback URLs without any
proxy from the environment. Standard library only."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

LOOPBACK = "127.0.0.1"
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
HTTP_TIMEOUT_S = 3.0
POLL_S = 0.05
LOG_TAIL_BYTES = 12_000

# Never through an HTTP proxy from the environment: everything here is on loopback.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class StackError(Exception):
    """The stack could not start, a wait ran out, or an HTTP call failed."""


# --- small helpers ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def http_json(
    method: str,
    url: str,
    body: Any = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = HTTP_TIMEOUT_S,
) -> tuple[int, Any]:
    """(status, parsed JSON or text) of one loopback request; HTTP errors are returned, not raised.

    Raises StackError when nothing answers."""
    data = None if body is None else json.dumps(body).encode()
    # Only the stack's own http:// loopback URLs are ever opened here.
    request = urllib.request.Request(url, data=data, method=method, headers=dict(headers or {}))
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with _DIRECT.open(request, timeout=timeout) as response:
            status, raw = int(response.status), response.read()
    except urllib.error.HTTPError as err:
        status, raw = int(err.code), err.read()
    except (OSError, ValueError) as exc:  # refused, reset, timeout (URLError is an OSError)
        raise StackError(f"{method} {url}: {exc}") from None
    text = raw.decode("utf-8", "replace")
    try:
        return status, json.loads(text)
    except ValueError:
        return status, text


def get_json(url: str, timeout: float = HTTP_TIMEOUT_S) -> Any:
    status, payload = http_json("GET", url, timeout=timeout)
    if status != 200:
        raise StackError(f"GET {url}: HTTP {status}: {str(payload)[:300]}")
    return payload


def poll(
    check: Callable[[], T | None],
    timeout: float,
    what: str,
    every: float = POLL_S,
    tick: Callable[[], None] | None = None,
) -> T:
    """The first truthy result of `check`, polled every `every` seconds; StackError after `timeout`.

    `tick` runs on every round (the demo prints what changed). A StackError raised by `check` (a
    server not answering yet) counts as not yet."""
    deadline = time.monotonic() + timeout
    last_error = ""
    for _ in range(int(timeout / every) + 2):
        if tick is not None:
            tick()
        try:
            result = check()
        except StackError as exc:
            result, last_error = None, str(exc)
        if result:
            return result
        if time.monotonic() >= deadline:
            break
        time.sleep(every)  # the interval between two probes, bounded by the deadline
    detail = f" (last error: {last_error})" if last_error else ""
    raise StackError(f"timed out after {timeout:g}s waiting for {what}{detail}")


def parse_time(value: str) -> datetime:
    """RFC 3339 from Prometheus, Alertmanager or the store (nanoseconds cut to microseconds)."""
    text = value.strip().replace("Z", "+00:00")
    if "." in text:
        head, _, rest = text.partition(".")
        digits = "".join(c for c in rest if c.isdigit())
        zone = rest[len(digits) :]
        text = f"{head}.{digits[:6].ljust(6, '0')}{zone}"
    parsed = datetime.fromisoformat(text)
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def pid_alive(pid: int) -> bool:
    """Alive and not a zombie (a zombie has exited; only its parent's wait() is missing)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def live_pid(pid_file: Path, pattern: str) -> int | None:
    """The pid in `pid_file` if that process is alive and its command line contains `pattern`
    (a recycled pid belonging to something else is never signalled)."""
    try:
        pid = int(pid_file.read_text().strip() or "0")
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
    except (OSError, ValueError):
        return None
    return pid if pid > 0 and pattern in cmdline and pid_alive(pid) else None


def stop_pid(pid: int, timeout: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM, then SIGKILL once `timeout` has passed; returns when the process is gone."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / POLL_S) + 2):
        if not pid_alive(pid) or time.monotonic() >= deadline:
            break
        time.sleep(POLL_S)
    if pid_alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        for _ in range(100):
            if not pid_alive(pid):
                break
            time.sleep(POLL_S)


def log_tail(path: Path, limit: int = LOG_TAIL_BYTES) -> str:
    try:
        data = path.read_bytes()
    except OSError:
        return "(no log)"
    cut = f"[... {len(data) - limit} bytes cut ...]\n" if len(data) > limit else ""
    return cut + data[-limit:].decode("utf-8", "replace")


# --- processes ----------------------------------------------------------------------------------


class ChildProcess:
    """A server we start ourselves: output to a log file, stopped by PID (TERM, then KILL)."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        env: Mapping[str, str] | None = None,
        preexec_fn: Callable[[], None] | None = None,  # runs in the child before exec (a resource limit)
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.env = dict(env) if env is not None else None
        self.preexec_fn = preexec_fn
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def popen(self) -> subprocess.Popen[bytes] | None:
        """The running child (to signal it, as a test sends SIGHUP); None once stopped."""
        return self._proc

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, cwd: Path | None = None) -> None:
        with self.log_path.open("ab") as log:
            log.write(f"--- start: {' '.join(self.argv)}\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                env=self.env,
                preexec_fn=self.preexec_fn,
                start_new_session=True,  # a Ctrl-C in the terminal reaches us, and we stop it in order
            )

    def exited(self) -> int | None:
        return None if self._proc is None else self._proc.poll()

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; the exit status (None if never started)."""
        proc, self._proc = self._proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)
        return proc.returncode

    def kill(self) -> None:
        """SIGKILL: no clean-up runs, exactly like a crash."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(STOP_TIMEOUT_S)
