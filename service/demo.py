"""`remediator demo`: the whole loop on this machine, with the real binaries.

A `Stack` is everything the T-OPS-04 runbook touches plus the monitoring around it, on loopback ports
with its own temporary directory: nats-server (JetStream) and the simulated router, both started and
stopped through the runbook scripts (`demo/scripts/*.sh`, pid files in the state dir), Prometheus
(scrape and evaluation every second, the `for: 0s` alerting rules), Alertmanager (short group
timings, no clustering, bearer auth to the remediator from a credentials file) and the remediator
itself, serving the shipped rules and playbooks with their ports and paths pointed at this stack.

The end-to-end tests (tests/e2e) drive the same `Stack`; `remediator demo` starts one, injects each
fault in turn, prints what happens as it happens and the report links, and stops everything by PID
when it ends, on Ctrl-C or on SIGTERM.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any, Protocol, TypeVar

import yaml

T = TypeVar("T")

LOOPBACK = "127.0.0.1"


def _repository() -> Path:
    """The checkout whose demo/, rules/, playbooks/ and alertmanager/ the stack uses: the one this
    package is in (an editable install, scripts/run.sh), else the current directory."""
    for candidate in (Path(__file__).resolve().parent.parent, Path.cwd()):
        if (candidate / "demo" / "scripts" / "nats_start.sh").is_file():
            return candidate
    return Path(__file__).resolve().parent.parent


REPO = _repository()
INSTALL_HINT = "apt-get install nats-server prometheus prometheus-alertmanager"
# binary -> its Debian package; curl is what the runbook scripts talk HTTP with
BINARIES = {
    "nats-server": "nats-server",
    "prometheus": "prometheus",
    "prometheus-alertmanager": "prometheus-alertmanager",
    "curl": "curl",
}
_EXTRA_PATH = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
HTTP_TIMEOUT_S = 3.0
POLL_S = 0.05
LOG_TAIL_BYTES = 12_000
ROUTER = "demo.router"
TERMINAL_STATES = frozenset({"succeeded", "failed", "escalated", "refused", "cancelled", "interrupted"})

# The executor records `failed` before its on_failure steps and escalation, then `escalated`: a
# `failed` run is taken as final once it has stayed so this long.
FAILED_SETTLE_S = 2.0

# Alertmanager escalations go back into Alertmanager as alerts with these names; a person's
# receiver gets them, never the remediator's own webhook.
ESCALATION_ALERTS = 'alertname=~"Remediation.*"'

# Never through an HTTP proxy from the environment: everything here is on loopback.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class StackError(Exception):
    """The stack could not start, a wait ran out, or an HTTP call failed."""


class MissingBinaries(StackError):
    """One or more of the real servers is not installed; the message says what to install."""


def find_binaries() -> dict[str, str]:
    """The path of each real server binary, or MissingBinaries naming the Debian packages."""
    search = os.pathsep.join([os.environ.get("PATH", ""), *_EXTRA_PATH])
    found: dict[str, str] = {}
    missing: list[str] = []
    packages: list[str] = []
    for name, package in BINARIES.items():
        path = shutil.which(name, path=search)
        if path is None:
            missing.append(f"{name} (Debian package {package})")
            packages.append(package)
        else:
            found[name] = path
    if missing:
        hint = INSTALL_HINT + "".join(f" {p}" for p in packages if p not in INSTALL_HINT.split())
        raise MissingBinaries(f"not installed: {', '.join(missing)}. Install them with: {hint}")
    if not (REPO / "demo" / "scripts" / "nats_start.sh").is_file():
        raise StackError(f"no demo/scripts in {REPO}: run it from a checkout of the repository")
    return found


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
    request = urllib.request.Request(url, data=data, method=method, headers=dict(headers or {}))  # noqa: S310
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


def _pid_alive(pid: int) -> bool:
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
    return pid if pid > 0 and pattern in cmdline and _pid_alive(pid) else None


def stop_pid(pid: int, timeout: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM, then SIGKILL once `timeout` has passed; returns when the process is gone."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / POLL_S) + 2):
        if not _pid_alive(pid) or time.monotonic() >= deadline:
            break
        time.sleep(POLL_S)
    if _pid_alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        for _ in range(100):
            if not _pid_alive(pid):
                break
            time.sleep(POLL_S)


def settled(row: Mapping[str, Any]) -> bool:
    """An execution (a row of GET /api/v1/executions) in its final state."""
    if row["state"] != "failed":
        return row["state"] in TERMINAL_STATES
    return (datetime.now(UTC) - parse_time(row["updated_at"])).total_seconds() >= FAILED_SETTLE_S


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

    def __init__(self, name: str, argv: Sequence[str], log_path: Path, env: Mapping[str, str] | None = None) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.env = dict(env) if env is not None else None
        self._proc: subprocess.Popen[bytes] | None = None

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


class Remediator(Protocol):
    """What the stack needs of the remediator process (tests pass their ServiceProcess)."""

    port: int

    @property
    def log_path(self) -> Path: ...

    def start(self) -> None: ...
    def kill(self) -> None: ...
    def stop(self) -> None: ...


RemediatorFactory = Callable[[Path, dict[str, Any], int], Remediator]


@dataclass
class RemediatorProcess:
    """`remediator serve` as a child process: config written to `workdir`, ready when /-/ready is 200."""

    workdir: Path
    config: dict[str, Any]
    port: int
    _child: ChildProcess | None = None

    @property
    def log_path(self) -> Path:
        return self.workdir / "remediator.log"

    @property
    def pid(self) -> int | None:
        return None if self._child is None else self._child.pid

    def start(self) -> None:
        config_path = self.workdir / "remediator.yaml"
        config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        self._child = ChildProcess(
            "remediator",
            [sys.executable, "-m", "service.cli", "serve", "--config", str(config_path)],
            self.log_path,
            env,
        )
        self._child.start(cwd=self.workdir)
        url = f"http://{LOOPBACK}:{self.port}/-/ready"

        def ready() -> bool:
            assert self._child is not None
            code = self._child.exited()
            if code is not None:
                raise StackError(f"the remediator exited with {code} during start-up:\n{log_tail(self.log_path)}")
            try:
                return http_json("GET", url, timeout=1.0)[0] == 200
            except StackError:
                return False

        try:
            poll(ready, START_TIMEOUT_S, f"the remediator to be ready at {url}")
        except BaseException:
            self.stop()
            raise

    def kill(self) -> None:
        if self._child is not None:
            self._child.kill()

    def stop(self) -> None:
        if self._child is not None:
            self._child.stop()


def default_remediator(workdir: Path, config: dict[str, Any], port: int) -> Remediator:
    return RemediatorProcess(workdir, config, port)


# --- the stack ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ports:
    nats: int
    nats_monitor: int
    router_tcp: int
    router_http: int
    prometheus: int
    alertmanager: int
    remediator: int

    @classmethod
    def from_base(cls, base: int) -> Ports:
        if not 1024 <= base <= 65535 - 7:
            raise StackError(f"--ports-base must be between 1024 and {65535 - 7}, got {base}")
        return cls(*range(base, base + 7))

    @classmethod
    def free(cls) -> Ports:
        """Seven distinct ports the OS handed out a moment ago (held open together, so no repeats)."""
        with contextlib.ExitStack() as stack:
            sockets = [stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) for _ in range(7)]
            for sock in sockets:
                sock.bind((LOOPBACK, 0))
            return cls(*(int(s.getsockname()[1]) for s in sockets))

    def check_free(self) -> None:
        for name, port in vars(self).items():
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                try:
                    sock.bind((LOOPBACK, port))
                except OSError as exc:
                    raise StackError(f"port {port} ({name}) is not free on {LOOPBACK}: {exc.strerror}") from None


@dataclass(frozen=True)
class StackOptions:
    """What a scenario may change; everything else is the shipped configuration."""

    group_wait: str = "1s"
    group_interval: str = "2s"
    repeat_interval: str = "1h"
    storm_max_admissions: int | None = None
    storm_window_seconds: float | None = None
    enable_rules: tuple[str, ...] = ()  # opt-in rules (shipped `enabled: false`) to switch on
    escalation_resend_interval: str = "30s"


def stack_rules(
    rules_glob: Sequence[Path],
    playbook_files: Sequence[Path],
    out_dir: Path,
    params: Mapping[str, Any],
    enable: Collection[str] = (),
) -> list[Path]:
    """The shipped rules with `params` added to every rule whose playbook declares them (and whose
    rule does not set them itself): the playbooks' defaults name the production ports and paths.
    Rules in `enable` are switched on. Written to `out_dir`, one file per shipped file."""
    declared: dict[str, set[str]] = {}
    for path in playbook_files:
        doc = yaml.safe_load(path.read_text())
        declared[str(doc["name"])] = set((doc.get("params") or {}).keys())
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    unknown = set(enable)
    for path in rules_glob:
        doc = yaml.safe_load(path.read_text())
        for rule in doc.get("rules") or []:
            given = dict(rule.get("params") or {})
            for key, value in params.items():
                if key in declared.get(str(rule["playbook"]), set()) and key not in given:
                    given[key] = value
            if given:
                rule["params"] = given
            if rule["name"] in enable:
                rule["enabled"] = True
                unknown.discard(rule["name"])
        target = out_dir / path.name
        target.write_text(
            f"# GENERATED from {path} by service/demo.py: ports and paths of this stack.\n"
            + yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)
        )
        written.append(target)
    if unknown:
        raise StackError(f"no such rule to enable: {', '.join(sorted(unknown))}")
    return written


class Stack:
    """nats-server, the router, Prometheus, Alertmanager and the remediator on loopback ports."""

    def __init__(
        self,
        workdir: Path,
        ports: Ports | None = None,
        options: StackOptions | None = None,
        remediator_factory: RemediatorFactory = default_remediator,
    ) -> None:
        self.binaries = find_binaries()
        self.workdir = workdir.resolve()
        self.ports = ports or Ports.free()
        self.options = options or StackOptions()
        self._remediator_factory = remediator_factory
        self.state_dir = self.workdir / "state"  # BEAMLINE_STATE_DIR: pid files, NATS store, router log
        self.remediator_dir = self.workdir / "remediator"
        self.secrets_dir = self.workdir / "secrets"
        self.webhook_token_file = self.secrets_dir / "webhook.token"
        self.operator_token_file = self.secrets_dir / "operator.token"
        self.scripts_log = self.workdir / "scripts.log"
        self.prometheus = ChildProcess(
            "prometheus",
            [
                self.binaries["prometheus"],
                f"--config.file={self.workdir / 'prometheus' / 'prometheus.yml'}",
                f"--storage.tsdb.path={self.workdir / 'prometheus' / 'data'}",
                f"--web.listen-address={LOOPBACK}:{self.ports.prometheus}",
            ],
            self.workdir / "prometheus" / "prometheus.log",
        )
        self.alertmanager = ChildProcess(
            "alertmanager",
            [
                self.binaries["prometheus-alertmanager"],
                f"--config.file={self.workdir / 'alertmanager' / 'alertmanager.yml'}",
                f"--storage.path={self.workdir / 'alertmanager' / 'data'}",
                f"--web.listen-address={LOOPBACK}:{self.ports.alertmanager}",
                "--cluster.listen-address=",  # no gossip: one instance, loopback only
            ],
            self.workdir / "alertmanager" / "alertmanager.log",
        )
        self.remediator: Remediator | None = None
        self.remediator_config: dict[str, Any] = {}
        self.started = False

    # --- addresses ----------------------------------------------------------------------------

    @property
    def nats_url(self) -> str:
        return f"nats://{LOOPBACK}:{self.ports.nats}"

    @property
    def nats_monitor_url(self) -> str:
        return f"http://{LOOPBACK}:{self.ports.nats_monitor}"

    @property
    def router_instance(self) -> str:
        """The router's `instance` label in Prometheus (and in every alert about it)."""
        return f"{LOOPBACK}:{self.ports.router_http}"

    @property
    def router_url(self) -> str:
        return f"http://{self.router_instance}"

    @property
    def prometheus_url(self) -> str:
        return f"http://{LOOPBACK}:{self.ports.prometheus}"

    @property
    def alertmanager_url(self) -> str:
        return f"http://{LOOPBACK}:{self.ports.alertmanager}"

    @property
    def remediator_url(self) -> str:
        return f"http://{LOOPBACK}:{self.ports.remediator}"

    def report_url(self, execution_id: str) -> str:
        return f"{self.remediator_url}/executions/{execution_id}"

    def logs(self) -> list[tuple[str, Path]]:
        return [
            ("nats-server", self.state_dir / "nats.log"),
            ("router", self.state_dir / "router.log"),
            ("runbook scripts run by the stack", self.scripts_log),
            ("prometheus", self.prometheus.log_path),
            ("alertmanager", self.alertmanager.log_path),
            ("remediator", self.remediator_dir / "remediator.log"),
        ]

    # --- configuration ------------------------------------------------------------------------

    def script_env(self) -> dict[str, str]:
        search = os.pathsep.join([os.environ.get("PATH", ""), *_EXTRA_PATH])
        return {
            **os.environ,
            "PATH": search,
            "BEAMLINE_STATE_DIR": str(self.state_dir),
            "BEAMLINE_NATS_PORT": str(self.ports.nats),
            "BEAMLINE_NATS_MONITOR_PORT": str(self.ports.nats_monitor),
            "BEAMLINE_NATS_SERVER": self.binaries["nats-server"],
            "BEAMLINE_ROUTER_TCP_PORT": str(self.ports.router_tcp),
            "BEAMLINE_ROUTER_HTTP_PORT": str(self.ports.router_http),
            "BEAMLINE_PYTHON": sys.executable,
            "BEAMLINE_START_TIMEOUT": "20",
        }

    def playbook_params(self) -> dict[str, Any]:
        """The playbooks' production defaults (ports 4222/8222/9000/9001, /tmp/beamline-demo) for this stack."""
        return {
            "scripts_dir": str(REPO / "demo" / "scripts"),
            "state_dir": str(self.state_dir),
            "python": sys.executable,
            "nats_host": LOOPBACK,
            "nats_port": self.ports.nats,
            "nats_monitor_port": self.ports.nats_monitor,
            "router_host": LOOPBACK,
            "router_tcp_port": self.ports.router_tcp,
            "router_http_port": self.ports.router_http,
            "nodes": f"{self.ports.router_tcp}:{self.ports.router_http}",
        }

    def write_configs(self) -> None:
        for directory in (
            self.state_dir,
            self.remediator_dir,
            self.secrets_dir,
            self.prometheus.log_path.parent,
            self.alertmanager.log_path.parent,
        ):
            directory.mkdir(parents=True, exist_ok=True)
        for path in (self.webhook_token_file, self.operator_token_file):
            path.write_text(secrets.token_urlsafe(32) + "\n")
            path.chmod(0o600)
        self._write_prometheus_config()
        self._write_alertmanager_config()
        rules = stack_rules(
            sorted((REPO / "rules").glob("*.yaml")),
            sorted((REPO / "playbooks").glob("*.yaml")),
            self.remediator_dir / "rules",
            self.playbook_params(),
            self.options.enable_rules,
        )
        limits: dict[str, Any] = {}
        if self.options.storm_max_admissions is not None:
            limits["storm_max_admissions"] = self.options.storm_max_admissions
        if self.options.storm_window_seconds is not None:
            limits["storm_window_seconds"] = self.options.storm_window_seconds
        self.remediator_config = {
            "listen_host": LOOPBACK,
            "listen_port": self.ports.remediator,
            "external_url": self.remediator_url,
            "store": {"path": str(self.remediator_dir / "remediator.db")},
            "rules": [str(p) for p in rules],
            "playbooks": [str(REPO / "playbooks" / "*.yaml")],
            "webhook_auth": {"bearer_token_file": str(self.webhook_token_file)},
            "operator": {"token_file": str(self.operator_token_file)},
            "prometheus_url": self.prometheus_url,
            "alertmanager_url": self.alertmanager_url,
            "nats_url": self.nats_url,
            "nats_monitor_url": self.nats_monitor_url,
            "escalation": {
                "channels": [{"name": "alertmanager", "type": "alertmanager"}],
                "alertmanager": {"resend_interval": self.options.escalation_resend_interval},
            },
            **({"limits": limits} if limits else {}),
        }

    def _write_prometheus_config(self) -> None:
        """alertmanager/prometheus.yml with this stack's addresses and the fast rules."""
        doc = yaml.safe_load((REPO / "alertmanager" / "prometheus.yml").read_text())
        doc["rule_files"] = [str(REPO / "alertmanager" / "router-alerts.fast.yml")]
        targets = {"beamline-router": self.router_instance, "prometheus": f"{LOOPBACK}:{self.ports.prometheus}"}
        for job in doc["scrape_configs"]:
            job["static_configs"] = [{"targets": [targets[job["job_name"]]]}]
        doc["alerting"]["alertmanagers"] = [
            {"static_configs": [{"targets": [f"{LOOPBACK}:{self.ports.alertmanager}"]}]}
        ]
        (self.prometheus.log_path.parent / "prometheus.yml").write_text(yaml.safe_dump(doc, sort_keys=False))

    def _write_alertmanager_config(self) -> None:
        """alertmanager/alertmanager.yml with short timings, this remediator and its token file, and
        the remediator's own escalation alerts routed to people rather than back to it."""
        doc = yaml.safe_load((REPO / "alertmanager" / "alertmanager.yml").read_text())
        route = doc["route"]
        route["group_wait"] = self.options.group_wait
        route["group_interval"] = self.options.group_interval
        route["repeat_interval"] = self.options.repeat_interval
        route["routes"] = [{"receiver": "people", "matchers": [ESCALATION_ALERTS]}]
        receivers = {receiver["name"]: receiver for receiver in doc["receivers"]}
        for hook in receivers["remediator"]["webhook_configs"]:
            hook["url"] = f"{self.remediator_url}/hooks/alertmanager"
            hook["http_config"]["authorization"]["credentials_file"] = str(self.webhook_token_file)
        receivers["people"] = {"name": "people"}  # no integration: the demo's "pager"
        doc["receivers"] = list(receivers.values())
        (self.alertmanager.log_path.parent / "alertmanager.yml").write_text(yaml.safe_dump(doc, sort_keys=False))

    # --- starting and stopping ----------------------------------------------------------------

    def run_script(self, name: str, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """A runbook script with this stack's BEAMLINE_* settings; its output is appended to scripts.log."""
        result = subprocess.run(
            [str(REPO / "demo" / "scripts" / name), *args],
            env=self.script_env(),
            cwd=self.workdir,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        with self.scripts_log.open("a") as log:
            log.write(f"--- {name} {' '.join(args)}: exit {result.returncode}\n{result.stdout}{result.stderr}")
        return result

    def _script_ok(self, name: str) -> None:
        result = self.run_script(name)
        if result.returncode != 0:
            raise StackError(f"{name} failed ({result.returncode}): {result.stdout}{result.stderr}")

    def start(self) -> None:
        """Start everything and wait until Prometheus sees a healthy router connected to NATS.

        NATS and the router come first (through the runbook scripts) and must be connected before
        Prometheus scrapes: a first sample of 0 would fire an alert with `for: 0s`."""
        self.started = True
        self.write_configs()
        self.alertmanager.start(cwd=self.workdir)
        self._script_ok("nats_start.sh")
        self._script_ok("router_start.sh")
        poll(self._router_settled, START_TIMEOUT_S, "the router to connect to NATS and see it healthy")
        self.prometheus.start(cwd=self.workdir)
        self.remediator = self._remediator_factory(self.remediator_dir, self.remediator_config, self.ports.remediator)
        self.remediator.start()
        for child in (self.alertmanager, self.prometheus):
            self._wait_ready(child, f"http://{LOOPBACK}:{self._port_of(child)}/-/ready")
        self.wait_baseline()

    def _port_of(self, child: ChildProcess) -> int:
        return self.ports.prometheus if child is self.prometheus else self.ports.alertmanager

    def _wait_ready(self, child: ChildProcess, url: str) -> None:
        def ready() -> bool:
            code = child.exited()
            if code is not None:
                raise StackError(f"{child.name} exited with {code} during start-up:\n{log_tail(child.log_path)}")
            return http_json("GET", url, timeout=1.0)[0] == 200

        poll(ready, START_TIMEOUT_S, f"{child.name} to be ready at {url}")

    def _router_settled(self) -> bool:
        metrics = self.router_metrics()
        return metrics.get("router_nats_connection_status") == 1 and metrics.get("router_nats_server_up") == 1

    def wait_baseline(self, timeout: float = START_TIMEOUT_S) -> None:
        """Prometheus scrapes the router, which is connected to a healthy NATS, and nothing fires."""
        instance = self.router_instance

        def healthy() -> bool:
            up = self.query(f'up{{job="beamline-router",instance="{instance}"}} == 1')
            nats_ok = self.query(
                f'router_nats_server_up{{instance="{instance}"}} == 1'
                f' and on (instance) router_nats_connection_status{{instance="{instance}"}} == 1'
            )
            return bool(up and nats_ok)

        poll(healthy, timeout, "Prometheus to scrape a router connected to a healthy NATS", every=0.2)

    def stop(self) -> None:
        """Stop everything by PID, newest first; never raises for a process already gone."""
        errors: list[str] = []
        steps: list[tuple[str, Callable[[], object]]] = [
            ("remediator", lambda: self.remediator.stop() if self.remediator is not None else None),
            ("prometheus", self.prometheus.stop),
            ("alertmanager", self.alertmanager.stop),
            ("router", lambda: self._stop_pidfile("router.pid", ROUTER)),
            ("nats-server", lambda: self._stop_pidfile("nats.pid", "nats-server")),
            ("strays", self._stop_strays),
        ]
        for name, stop in steps:
            try:
                stop()
            except Exception as exc:  # keep stopping the others
                errors.append(f"{name}: {exc}")
        if errors:
            raise StackError("stopping the stack: " + "; ".join(errors))

    def pids(self) -> dict[str, int | None]:
        """Every server's pid (None when it is not running)."""
        remediator = getattr(self.remediator, "pid", None)
        return {
            "nats-server": live_pid(self.state_dir / "nats.pid", "nats-server"),
            "router": live_pid(self.state_dir / "router.pid", ROUTER),
            "prometheus": self.prometheus.pid,
            "alertmanager": self.alertmanager.pid,
            "remediator": remediator if isinstance(remediator, int) else None,
        }

    def _stop_strays(self) -> None:
        """Anything still running from this stack's directory (a NATS a playbook was starting when the
        remediator was stopped, before its pid file was written): stopped by PID too."""
        marker = str(self.workdir).encode() + b"/"
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if marker in cmdline and _pid_alive(int(entry.name)):
                stop_pid(int(entry.name))

    def _stop_pidfile(self, name: str, pattern: str) -> None:
        pid = live_pid(self.state_dir / name, pattern)
        if pid is not None:
            stop_pid(pid)

    # --- the remediator -------------------------------------------------------------------------

    def kill_remediator(self) -> None:
        assert self.remediator is not None
        self.remediator.kill()

    def start_remediator(self) -> None:
        """Start it again on the same port, store and config (after `kill_remediator`)."""
        self.remediator = self._remediator_factory(self.remediator_dir, self.remediator_config, self.ports.remediator)
        self.remediator.start()

    def executions(self, **filters: str) -> list[dict[str, Any]]:
        query = urllib.parse.urlencode({"limit": "500", **filters})
        rows: list[dict[str, Any]] = get_json(f"{self.remediator_url}/api/v1/executions?{query}")["executions"]
        return rows

    def execution(self, execution_id: str) -> dict[str, Any]:
        report: dict[str, Any] = get_json(f"{self.remediator_url}/api/v1/executions/{execution_id}")
        return report

    def wait_execution(
        self,
        what: str,
        timeout: float,
        predicate: Callable[[dict[str, Any]], bool],
        tick: Callable[[], None] | None = None,
        terminal: bool = True,
        **filters: str,
    ) -> dict[str, Any]:
        """The first execution (oldest first) matching `filters` and `predicate`, once it is in a
        terminal state (or at once with terminal=False)."""

        def found() -> dict[str, Any] | None:
            rows: list[dict[str, Any]] = self.executions(**filters)
            for row in rows[::-1]:
                if predicate(row) and (not terminal or settled(row)):
                    return row
            return None

        chosen: dict[str, Any] = poll(found, timeout, what, every=0.1, tick=tick)
        return chosen

    # --- Prometheus and Alertmanager ----------------------------------------------------------

    def query(self, expr: str) -> list[dict[str, Any]]:
        payload = get_json(f"{self.prometheus_url}/api/v1/query?{urllib.parse.urlencode({'query': expr})}")
        result: list[dict[str, Any]] = payload["data"]["result"]
        return result

    def prometheus_alerts(self) -> list[dict[str, Any]]:
        alerts: list[dict[str, Any]] = get_json(f"{self.prometheus_url}/api/v1/alerts")["data"]["alerts"]
        return alerts

    def alertmanager_alerts(self, *matchers: str) -> list[dict[str, Any]]:
        query = urllib.parse.urlencode([("filter", m) for m in matchers])
        alerts: list[dict[str, Any]] = get_json(f"{self.alertmanager_url}/api/v2/alerts?{query}")
        return alerts

    def post_alerts(self, alerts: Sequence[Mapping[str, Any]]) -> None:
        """Alerts straight into Alertmanager's API (as Prometheus would send them)."""
        status, payload = http_json("POST", f"{self.alertmanager_url}/api/v2/alerts", list(alerts))
        if status != 200:
            raise StackError(f"Alertmanager refused the alerts: HTTP {status}: {str(payload)[:300]}")

    # --- the router and NATS ------------------------------------------------------------------

    def router_metrics(self) -> dict[str, float]:
        """The router's unlabelled metrics (name -> value) straight from its /metrics."""
        status, text = http_json("GET", f"{self.router_url}/metrics", timeout=2.0)
        if status != 200 or not isinstance(text, str):
            raise StackError(f"router /metrics: HTTP {status}")
        values: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#") and "{" not in line:
                name, _, value = line.partition(" ")
                with contextlib.suppress(ValueError):
                    values[name] = float(value)
        return values

    def router_admin(self, method: str, path: str, body: Any = None) -> Any:
        token = (self.state_dir / "router-admin.token").read_text().strip()
        status, payload = http_json(
            method, f"{self.router_url}/admin/{path.lstrip('/')}", body, {"Authorization": f"Bearer {token}"}
        )
        if status != 200:
            raise StackError(f"router admin {method} {path}: HTTP {status}: {str(payload)[:300]}")
        return payload

    def nats_pid(self) -> int | None:
        return live_pid(self.state_dir / "nats.pid", "nats-server")

    def kill_nats(self) -> int:
        """SIGKILL the nats-server the runbook scripts started (its pid file stays, as after a crash)."""
        pid = self.nats_pid()
        if pid is None:
            raise StackError("nats-server is not running")
        os.kill(pid, signal.SIGKILL)
        poll(lambda: not _pid_alive(pid), STOP_TIMEOUT_S, f"nats-server (pid {pid}) to die")
        return pid


@contextlib.contextmanager
def running_stack(
    workdir: Path,
    ports: Ports | None = None,
    options: StackOptions | None = None,
    remediator_factory: RemediatorFactory = default_remediator,
) -> Iterator[Stack]:
    stack = Stack(workdir, ports, options, remediator_factory)
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()


# --- what the NATS scenario measured ------------------------------------------------------------


def _seconds(a: datetime, b: datetime) -> float:
    return (b - a).total_seconds()


@dataclass(frozen=True)
class FixTimings:
    """Fault -> verified fix, split by who spent the time.

    detection: the fault until Prometheus has the alert firing (activeAt);
    delivery: until the remediator received Alertmanager's notification (group_wait included);
    remediator: until the fix was verified, of which `steps` and `verification` were the playbook's
    own work and waiting (its step durations, its verification checks and the intervals between
    polls) and `overhead` everything else (dispatch, admission, the store's writes, scheduling)."""

    detection_s: float
    delivery_s: float
    remediator_s: float
    receive_to_first_step_s: float
    steps_s: float
    verification_s: float
    overhead_s: float
    overhead_parts: Mapping[str, float] = field(default_factory=dict)

    @property
    def total_s(self) -> float:
        return self.detection_s + self.delivery_s + self.remediator_s

    def lines(self) -> list[str]:
        parts = ", ".join(f"{k} {v * 1000:.1f} ms" for k, v in self.overhead_parts.items())
        return [
            f"fault -> verified fix: {self.total_s:.2f}s",
            f"  Prometheus detection (fault -> alert active):        {self.detection_s:6.2f}s",
            f"  Alertmanager delivery (active -> webhook received):  {self.delivery_s:6.2f}s",
            f"  remediator (received -> verified):                   {self.remediator_s:6.2f}s",
            f"    received -> first step started:                    {self.receive_to_first_step_s * 1000:6.1f} ms",
            f"    steps:                                             {self.steps_s:6.2f}s",
            f"    verification (checks and poll intervals):          {self.verification_s:6.2f}s",
            f"    remediator's own overhead:                         {self.overhead_s * 1000:6.1f} ms ({parts})",
        ]


def fix_timings(
    report: Mapping[str, Any], fault_at: datetime, active_at: datetime, verify_interval: float
) -> FixTimings:
    """The split of one succeeded execution's report (GET /api/v1/executions/{id})."""
    execution, occurrence = report["execution"], report["alert"]
    received = parse_time(occurrence["first_received_at"])
    created = parse_time(execution["created_at"])
    states = [(e["message"].split(":", 1)[0], parse_time(e["at"])) for e in report["timeline"] if e["kind"] == "state"]
    running = next(at for state, at in states if state == "running")
    verifying = next((at for state, at in states if state == "verifying"), None)
    done = next(at for state, at in states if state == "succeeded")
    steps = [s for s in report["steps"] if s["phase"] == "steps"]
    parts: dict[str, float] = {"dispatch": _seconds(received, created), "start": _seconds(created, running)}
    steps_s = sum(float(s["duration_s"]) for s in steps)
    cursor = running
    gaps = 0.0
    for step in steps:
        started = parse_time(step["started_at"])
        gaps += _seconds(cursor, started)
        cursor = datetime.fromtimestamp(started.timestamp() + float(step["duration_s"]), UTC)
    parts["between steps"] = gaps
    first_step = parse_time(steps[0]["started_at"]) if steps else running
    verification_s = 0.0
    if verifying is not None:
        parts["before verification"] = _seconds(cursor, verifying)
        polls = [e for e in report["timeline"] if e["kind"] == "verify" and e["data"].get("phase") == "verify"]
        # Polls start every interval (the checks run inside it), so the waiting is the intervals
        # before the last poll plus the last poll's own checks.
        last_checks_s = sum(float(c["duration_s"]) for c in polls[-1]["data"].get("checks", [])) if polls else 0.0
        verification_s = verify_interval * max(0, len(polls) - 1) + last_checks_s
        parts["verification"] = _seconds(verifying, done) - verification_s
    else:
        parts["after steps"] = _seconds(cursor, done)
    return FixTimings(
        detection_s=_seconds(fault_at, active_at),
        delivery_s=_seconds(active_at, received),
        remediator_s=_seconds(received, done),
        receive_to_first_step_s=_seconds(received, first_step),
        steps_s=steps_s,
        verification_s=verification_s,
        overhead_s=sum(parts.values()),
        overhead_parts=parts,
    )


# --- the tour: `remediator demo` ----------------------------------------------------------------


class Interrupted(Exception):
    """SIGTERM or SIGHUP: stop the tour and clean up, as Ctrl-C does."""


@dataclass
class ScenarioResult:
    number: int
    name: str
    expected: str
    ok: bool
    outcome: str
    links: list[str] = field(default_factory=list)

    def line(self) -> str:
        verdict = "OK" if self.ok else "UNEXPECTED"
        links = "".join(f" {link}" for link in self.links)
        return f"scenario {self.number} {self.name}: {verdict} (expected {self.expected}): {self.outcome}{links}"


def _short(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


class Narrator:
    """Prints what changed since it last looked: alerts firing in Prometheus, executions and their
    steps, escalations, resolved notifications. Called from every wait of the tour."""

    def __init__(self, stack: Stack, out: Any = None, every: float = 0.25) -> None:
        self.stack = stack
        self.out = out if out is not None else sys.stdout
        self.every = every
        self.t0 = time.monotonic()
        self.active_at: dict[str, datetime] = {}  # alertname -> activeAt, first seen
        self._last = 0.0
        self._alerts: set[tuple[str, str]] = set()
        self._states: dict[str, str] = {}
        self._steps: dict[str, int] = {}
        self._escalations: dict[str, int] = {}
        self._alert_status: dict[str, str] = {}

    def say(self, message: str) -> None:
        print(f"[{time.monotonic() - self.t0:7.1f}s] {message}", file=self.out, flush=True)

    def tick(self, force: bool = False) -> None:
        if not force and time.monotonic() - self._last < self.every:
            return
        self._last = time.monotonic()
        with contextlib.suppress(StackError, KeyError, TypeError, ValueError):
            self._alerts_changed()
        with contextlib.suppress(StackError, KeyError, TypeError, ValueError):
            self._executions_changed()

    def _alerts_changed(self) -> None:
        now_firing: set[tuple[str, str]] = set()
        for alert in self.stack.prometheus_alerts():
            if alert["state"] != "firing":
                continue
            labels = alert["labels"]
            detail = "/".join(labels[k] for k in ("tenant", "provider", "consumer") if k in labels)
            key = (labels["alertname"], detail)
            now_firing.add(key)
            if key not in self._alerts:
                self.active_at.setdefault(labels["alertname"], parse_time(alert["activeAt"]))
                self.say(f"Prometheus: alert {key[0]}{' ' + detail if detail else ''} firing")
        for name, detail in sorted(self._alerts - now_firing):
            self.say(f"Prometheus: alert {name}{' ' + detail if detail else ''} no longer firing")
        self._alerts = now_firing

    def _executions_changed(self) -> None:
        for row in reversed(self.stack.executions()):
            execution_id, state = row["id"], row["state"]
            before = self._states.get(execution_id)
            if before is None:
                if state == "refused":
                    self.say(
                        f"remediator: {row['alertname']} -> rule {row['rule']}: refused ({_short(row['reason'], 120)})"
                    )
                else:
                    self.say(
                        f"remediator: {row['alertname']} -> rule {row['rule']}, playbook {row['playbook']}, "
                        f"target {row['target']}: remediation started ({execution_id})"
                    )
            self._states[execution_id] = state
            if state == "refused" and before is not None:
                continue
            if before in TERMINAL_STATES and self._alert_status.get(execution_id) == "resolved":
                continue
            report = self.stack.execution(execution_id)
            steps = report["steps"]
            for step in steps[self._steps.get(execution_id, 0) :]:
                self.say(
                    f"  {execution_id}: step {step['phase']}/{step['name']}: {step['status']}"
                    f" ({float(step['duration_s']):.2f}s) {_short(step['summary'], 110)}"
                )
            self._steps[execution_id] = len(steps)
            notes = [e for e in report["timeline"] if e["kind"] in ("escalation", "delivery")]
            for event in notes[self._escalations.get(execution_id, 0) :]:
                self.say(f"  {execution_id}: {event['kind']}: {_short(event['message'], 200)}")
            self._escalations[execution_id] = len(notes)
            if state != before and state != "refused" and (before is not None or state not in ("queued", "running")):
                reason = f" ({_short(row['reason'], 140)})" if row["reason"] else ""
                self.say(f"  {execution_id}: state -> {state}{reason}")
                if state in TERMINAL_STATES:
                    self.say(f"  report: {self.stack.report_url(execution_id)}")
            status = (report.get("alert") or {}).get("status", "")
            if self._alert_status.get(execution_id) == "firing" and status == "resolved":
                self.say(f"Alertmanager: resolved notification for {row['alertname']} received")
            self._alert_status[execution_id] = status


def _tour_nats(stack: Stack, narrator: Narrator) -> ScenarioResult:
    result = ScenarioResult(1, "NATS server killed", "restarted, verified, resolved", False, "")
    fault_at = datetime.now(UTC)
    pid = stack.kill_nats()
    narrator.say(f"fault: nats-server (pid {pid}) killed with SIGKILL")
    run = stack.wait_execution(
        "the NATS restart", 90, lambda r: r["state"] != "refused", tick=narrator.tick, rule="nats-process-down"
    )
    result.links.append(stack.report_url(run["id"]))
    if run["state"] != "succeeded":
        result.outcome = f"{run['state']}: {_short(run['reason'])}"
        return result
    report = poll(
        lambda: (r := stack.execution(run["id"]))["alert"]["status"] == "resolved" and r,
        45,
        "the resolved notification",
        every=0.2,
        tick=narrator.tick,
    )
    result.ok = True
    result.outcome = "succeeded (verified), resolved by Alertmanager"
    alertname = report["alert"]["alertname"]
    if alertname in narrator.active_at:
        timings = fix_timings(report, fault_at, narrator.active_at[alertname], verify_interval=1.0)
        result.outcome += (
            f"; fault -> verified fix {timings.total_s:.1f}s (Prometheus {timings.detection_s:.1f}s, "
            f"Alertmanager {timings.delivery_s:.1f}s, remediator {timings.remediator_s:.1f}s, "
            f"of which its own overhead {timings.overhead_s * 1000:.0f} ms)"
        )
    return result


def _tour_breaker_healthy(stack: Stack, narrator: Narrator) -> ScenarioResult:
    result = ScenarioResult(2, "circuit breaker open, provider healthy", "half-open, then closed", False, "")
    stack.router_admin("POST", "faults/circuit_breaker/tenant_a/openai/open")
    narrator.say("fault: circuit breaker tenant_a/openai forced open (the provider is healthy)")
    run = stack.wait_execution(
        "the breaker remediation",
        90,
        lambda r: r["state"] != "refused" and r["target"].endswith("/tenant_a/openai"),
        tick=narrator.tick,
        rule="circuit-breaker-open",
    )
    result.links.append(stack.report_url(run["id"]))
    status = stack.router_admin("GET", "circuit_breaker/tenant_a/openai/status")
    result.ok = run["state"] == "succeeded" and status.get("state") == "closed"
    result.outcome = f"{run['state']}, breaker {status.get('state')}"
    return result


def _tour_breaker_failing(stack: Stack, narrator: Narrator) -> ScenarioResult:
    result = ScenarioResult(
        3, "circuit breaker open, provider failing", "left open, escalated (RemediationFailed)", False, ""
    )
    stack.router_admin("POST", "faults/provider/anthropic", {"health": "healthy", "extra_latency_ms": 3000})
    narrator.say("fault: provider anthropic answers in 3 s ...")
    poll(
        lambda: stack.query(
            f'router_provider_latency_p95_ms{{instance="{stack.router_instance}",provider="anthropic"}} > 1000'
        ),
        30,
        "Prometheus to see anthropic's p95 above 1 s",
        every=0.2,
        tick=narrator.tick,
    )
    stack.router_admin("POST", "faults/provider/anthropic", {"health": "failing"})
    narrator.say("fault: ... and now fails every request: its circuit breakers open")
    run = stack.wait_execution(
        "the breaker remediation",
        90,
        lambda r: r["state"] != "refused" and r["target"].endswith("/anthropic"),
        tick=narrator.tick,
        rule="circuit-breaker-open",
    )
    result.links.append(stack.report_url(run["id"]))
    escalated = poll(
        lambda: stack.alertmanager_alerts('alertname="RemediationFailed"', f'execution_id="{run["id"]}"'),
        30,
        "the RemediationFailed alert in Alertmanager",
        every=0.2,
        tick=narrator.tick,
    )
    result.ok = run["state"] == "escalated" and bool(escalated)
    result.outcome = f"{run['state']}, RemediationFailed in Alertmanager for {run['target']}"
    stack.router_admin("POST", "faults/reset")
    narrator.say("faults reset: provider healthy, breakers closed")
    return result


def _tour_backlog(stack: Stack, narrator: Narrator) -> ScenarioResult:
    result = ScenarioResult(4, "JetStream backlog rising", "diagnosed, escalated with the pending count", False, "")
    stack.router_admin("POST", "load", {"rate": 800})
    narrator.say("fault: 800 msg/s published to DECIDE; the consumer handles 200 msg/s")
    try:
        run = stack.wait_execution(
            "the backlog diagnostics",
            120,
            lambda r: r["state"] != "refused",
            tick=narrator.tick,
            rule="jetstream-backlog",
        )
    finally:
        stack.router_admin("POST", "load", {"rate": 0})
    result.links.append(stack.report_url(run["id"]))
    report = stack.execution(run["id"])
    info = next((s for s in report["steps"] if s["name"] == "consumer_info"), None)
    pending = (info or {}).get("data", {}).get("num_pending")
    escalations = [e["message"] for e in report["timeline"] if e["kind"] == "escalation"]
    result.ok = (
        run["state"] == "succeeded" and pending is not None and any(f"{pending} pending" in m for m in escalations)
    )
    result.outcome = f"{run['state']}, escalated: {pending} messages pending on DECIDE/router_decide_consumer"
    return result


TOUR: tuple[Callable[[Stack, Narrator], ScenarioResult], ...] = (
    _tour_nats,
    _tour_breaker_healthy,
    _tour_breaker_failing,
    _tour_backlog,
)


def _raise_interrupted(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(signal.Signals(signum).name)


def run_demo(ports_base: int | None, keep: bool, out: Any = None) -> int:
    """The whole tour; 0 when every scenario ended as expected. Everything started is stopped by PID
    and the temporary directory removed at the end, on Ctrl-C (SIGINT), SIGTERM and SIGHUP too."""
    out = out if out is not None else sys.stdout

    def say(message: str) -> None:
        print(message, file=out, flush=True)

    try:
        find_binaries()
        ports = Ports.from_base(ports_base) if ports_base is not None else Ports.free()
        ports.check_free()
    except StackError as exc:
        say(f"remediator demo: {exc}")
        return 2
    previous = {s: signal.signal(s, _raise_interrupted) for s in (signal.SIGTERM, signal.SIGHUP)}
    workdir = Path(tempfile.mkdtemp(prefix="remediator-demo-"))
    stack: Stack | None = None
    code = 1
    try:
        say(
            "remediator demo: starting nats-server, the router, Prometheus, Alertmanager and the remediator"
            f" in {workdir}"
        )
        stack = Stack(workdir, ports)
        stack.start()
        pids = ", ".join(f"{name} pid {pid}" for name, pid in stack.pids().items())
        say(f"stack up: {pids}")
        say(f"  remediator   {stack.remediator_url}/  (reports: {stack.remediator_url}/executions/ID)")
        say(f"  Prometheus   {stack.prometheus_url}/alerts")
        say(f"  Alertmanager {stack.alertmanager_url}/#/alerts")
        say(f"  router       {stack.router_url}/metrics, NATS {stack.nats_url} (monitoring {stack.nats_monitor_url})")
        narrator = Narrator(stack, out)
        results: list[ScenarioResult] = []
        for scenario in TOUR:
            try:
                result = scenario(stack, narrator)
            except StackError as exc:
                number = len(results) + 1
                result = ScenarioResult(number, scenario.__name__.removeprefix("_tour_"), "-", False, f"error: {exc}")
            narrator.tick(force=True)
            say(f"==> {result.line()}")
            results.append(result)
            with contextlib.suppress(StackError):
                stack.wait_baseline(timeout=60)
        say("")
        say(f"tour finished: {sum(r.ok for r in results)} of {len(results)} scenarios as expected")
        for result in results:
            say(f"  {result.line()}")
        code = 0 if all(r.ok for r in results) else 1
        if keep:
            say("--keep: everything stays up; Ctrl-C (or SIGTERM) stops it and removes " + str(workdir))
            signal.pause()
    except (KeyboardInterrupt, Interrupted) as exc:
        say(f"\nremediator demo: interrupted ({str(exc) or 'SIGINT'}): stopping everything")
        code = 130
    except StackError as exc:
        say(f"remediator demo: {exc}")
        if stack is not None:
            for name, path in stack.logs():
                say(f"--- {name} log ({path}), last lines:\n{log_tail(path, 2000)}")
    finally:
        # A second Ctrl-C must not leave servers behind: clean-up runs to its end (each stop is bounded).
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        try:
            if stack is not None:
                stack.stop()
        except StackError as exc:
            say(f"remediator demo: {exc}")
            code = code or 1
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        say(f"remediator demo: stopped everything, removed {workdir}")
    return code


def add_demo_command(commands: Any) -> None:
    """The `remediator demo` subcommand (called by service/cli.py's parser)."""
    demo = commands.add_parser(
        "demo",
        help="the whole loop on this machine with the real binaries",
        description="Starts nats-server, the simulated router, Prometheus, Alertmanager and the remediator on "
        f"loopback, injects each fault in turn and prints what happens. Needs: {INSTALL_HINT}.",
    )
    demo.add_argument(
        "--ports-base",
        type=int,
        default=None,
        metavar="PORT",
        help="use PORT..PORT+6 (NATS, NATS monitoring, router TCP, router HTTP, Prometheus, "
        "Alertmanager, remediator); default: free ports",
    )
    demo.add_argument("--keep", action="store_true", help="leave everything running after the tour until Ctrl-C")
    demo.set_defaults(run=lambda args: run_demo(args.ports_base, args.keep))
