"""The demo stack: the whole loop on this machine, with the real binaries.

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
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from demo import fast_rules
from demo.processes import (
    LOOPBACK,
    START_TIMEOUT_S,
    STOP_TIMEOUT_S,
    ChildProcess,
    StackError,
    get_json,
    http_json,
    live_pid,
    log_tail,
    parse_time,
    pid_alive,
    poll,
    stop_pid,
)
from service.store import TERMINAL_STATES

# The checkout whose demo/, rules/, playbooks/ and alertmanager/ the stack uses: this package's.
REPO = Path(__file__).resolve().parent.parent
INSTALL_HINT = "apt-get install nats-server prometheus prometheus-alertmanager"
# binary -> its Debian package; curl is what the runbook scripts talk HTTP with
BINARIES = {
    "nats-server": "nats-server",
    "prometheus": "prometheus",
    "prometheus-alertmanager": "prometheus-alertmanager",
    "curl": "curl",
}

_EXTRA_PATH = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")
ROUTER = "demo.router"

# The executor records `failed` before its on_failure steps and escalation, then `escalated`: a
# `failed` run is taken as final once it has stayed so this long.
FAILED_SETTLE_S = 2.0

# Alertmanager escalations go back into Alertmanager as alerts with these names; a person's
# receiver gets them, never the remediator's own webhook.
ESCALATION_ALERTS = 'alertname=~"Remediation.*"'


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


def settled(row: Mapping[str, Any]) -> bool:
    """An execution (a row of GET /api/v1/executions) in its final state."""
    if row["state"] != "failed":
        return row["state"] in TERMINAL_STATES
    return (datetime.now(UTC) - parse_time(row["updated_at"])).total_seconds() >= FAILED_SETTLE_S


@dataclass
class RemediatorProcess:
    """`remediator serve` as a child process: config written to `workdir`, ready when /-/ready is 200.
    The demo's stack and the tests run the service through this one class."""

    workdir: Path
    config: dict[str, Any]
    port: int = 0
    env: dict[str, str] = field(default_factory=dict)  # on top of this process's environment
    preexec_fn: Callable[[], None] | None = None
    _child: ChildProcess | None = None

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "remediator.log"

    @property
    def pid(self) -> int | None:
        return None if self._child is None else self._child.pid

    @property
    def proc(self) -> subprocess.Popen[bytes] | None:
        return None if self._child is None else self._child.popen

    def start(self) -> None:
        config_path = self.workdir / "remediator.yaml"
        config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))
        pythonpath = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
        self._child = ChildProcess(
            "remediator",
            [sys.executable, "-m", "service.cli", "serve", "--config", str(config_path)],
            self.log_path,
            {**os.environ, "PYTHONPATH": pythonpath, **self.env},
            self.preexec_fn,
        )
        self._child.start(cwd=self.workdir)
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise

    def wait_ready(self) -> None:
        url = f"{self.url}/-/ready"

        def ready() -> bool:
            assert self._child is not None
            code = self._child.exited()
            if code is not None:
                raise StackError(f"the remediator exited with {code} during start-up:\n{log_tail(self.log_path)}")
            try:
                return http_json("GET", url, timeout=1.0)[0] == 200
            except StackError:
                return False

        poll(ready, START_TIMEOUT_S, f"the remediator to be ready at {url}")

    def kill(self) -> None:
        """SIGKILL: no clean-up runs, exactly like a crash."""
        if self._child is not None:
            self._child.kill()

    def terminate(self, timeout: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM, as in production (SIGKILL after `timeout`); the exit status."""
        return None if self._child is None else self._child.stop(timeout)

    def stop(self) -> None:
        self.terminate()

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


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
    # how long a refusal about a target whose run just fixed it waits to see whether its alert
    # resolves (docs/escalation.md); the demo's fast timings resolve alerts within seconds
    refusal_grace: str = "20s"
    # Directories laid out like the repository (rules/*.yaml, playbooks/*.yaml, alertmanager/*.yml
    # alerting rules) loaded beside the shipped ones: a team's own automation, e.g. the worked example.
    extra_dirs: tuple[Path, ...] = ()

    def extra_files(self, kind: str, pattern: str) -> list[Path]:
        return [path for directory in self.extra_dirs for path in sorted((directory / kind).glob(pattern))]

    params: Mapping[str, Any] = field(default_factory=dict)  # playbook params over the stack's own
    settings: Mapping[str, Any] = field(default_factory=dict)  # remediator settings added (an inventory, ssh)


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
            f"# GENERATED from {path} by demo/stack.py: ports and paths of this stack.\n"
            + yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)
        )
        written.append(target)
    if unknown:
        raise StackError(f"no such rule to enable: {', '.join(sorted(unknown))}")
    return written


def _alerting(path: Path) -> bool:
    """A Prometheus alerting rules file (not a promtool test of one, not a config)."""
    doc = yaml.safe_load(path.read_text())
    return isinstance(doc, dict) and "groups" in doc


class Stack:
    """nats-server, the router, Prometheus, Alertmanager and the remediator on loopback ports."""

    def __init__(
        self,
        workdir: Path,
        ports: Ports | None = None,
        options: StackOptions | None = None,
    ) -> None:
        self.binaries = find_binaries()
        self.workdir = workdir.resolve()
        self.ports = ports or Ports.free()
        self.options = options or StackOptions()
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
        self.remediator: RemediatorProcess | None = None
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
        playbooks = [*sorted((REPO / "playbooks").glob("*.yaml")), *self.options.extra_files("playbooks", "*.yaml")]
        rules = stack_rules(
            [*sorted((REPO / "rules").glob("*.yaml")), *self.options.extra_files("rules", "*.yaml")],
            playbooks,
            self.remediator_dir / "rules",
            {**self.playbook_params(), **self.options.params},
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
            "playbooks": [str(p) for p in playbooks],
            "webhook_auth": {"bearer_token_file": str(self.webhook_token_file)},
            "operator": {"token_file": str(self.operator_token_file)},
            "prometheus_url": self.prometheus_url,
            "alertmanager_url": self.alertmanager_url,
            "nats_url": self.nats_url,
            "nats_monitor_url": self.nats_monitor_url,
            "escalation": {
                "channels": [{"name": "alertmanager", "type": "alertmanager"}],
                "alertmanager": {"resend_interval": self.options.escalation_resend_interval},
                "refusal_grace": self.options.refusal_grace,
            },
            **({"limits": limits} if limits else {}),
            **self.options.settings,
        }

    def _write_prometheus_config(self) -> None:
        """alertmanager/prometheus.yml with this stack's addresses and the fast rules."""
        doc = yaml.safe_load((REPO / "alertmanager" / "prometheus.yml").read_text())
        doc["rule_files"] = [str(REPO / "alertmanager" / "router-alerts.fast.yml")]
        for index, path in enumerate(p for p in self.options.extra_files("alertmanager", "*.yml") if _alerting(p)):
            fast = self.prometheus.log_path.parent / f"extra-{index}-{path.name}"
            fast.write_text(fast_rules.render(path.read_text()))  # for: 0s, as the shipped rules here
            doc["rule_files"].append(str(fast))
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
        self.remediator = RemediatorProcess(self.remediator_dir, self.remediator_config, self.ports.remediator)
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
            if marker in cmdline and pid_alive(int(entry.name)):
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
        self.remediator = RemediatorProcess(self.remediator_dir, self.remediator_config, self.ports.remediator)
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
        poll(lambda: not pid_alive(pid), STOP_TIMEOUT_S, f"nats-server (pid {pid}) to die")
        return pid
