"""Real nats-server, Prometheus and Alertmanager processes for tests.

Each runs on free loopback ports with its own temp dirs, is declared ready by polling an HTTP
endpoint against a deadline (never a fixed sleep), and is stopped by PID: SIGTERM, then SIGKILL if
it has not gone after a timeout, also when start-up fails. Output goes to a log file under the
test's tmp dir; the logs are attached to the report of a failing test (see ``attach_logs``).

A missing binary fails the test with the Debian package to install: CI must never skip these.
"""

from __future__ import annotations

import json
import os
import shutil
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pytest

from demo.processes import LOOPBACK, ChildProcess, free_port, poll

START_TIMEOUT_S = 30.0
LOG_TAIL_BYTES = 20_000

# binary -> the Debian package that installs it
_P = TypeVar("_P", bound="RealProcess")

DEBIAN_PACKAGES = {
    "nats-server": "nats-server",
    "prometheus": "prometheus",
    "promtool": "prometheus",
    "prometheus-alertmanager": "prometheus-alertmanager",
}

# Readiness probes and helpers talk to loopback only: never through an HTTP proxy from the environment.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def require_binary(name: str) -> str:
    """The path of a real binary, or fail the test naming the package that provides it."""
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/bin", "/sbin", "/bin"])
    path = shutil.which(name, path=search)
    if path is None:
        package = DEBIAN_PACKAGES.get(name, name)
        pytest.fail(f"{name} is not installed: apt-get install {package}", pytrace=False)
    return path


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    """GET ``url`` directly; (status, body), HTTP errors included. Raises OSError when unreachable."""
    try:
        with _DIRECT.open(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


class RealProcess(ChildProcess):
    """One server process: started with a readiness URL, stopped by PID, output in ``log_path``."""

    def __init__(self, name: str, argv: Sequence[str], log_path: Path, ready_url: str) -> None:
        super().__init__(name, argv, log_path)
        self.ready_url = ready_url

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise RuntimeError(f"{self.name} is not running")
        return self._proc.pid

    def start(self, cwd: Path | None = None) -> None:
        if self.running:
            raise RuntimeError(f"{self.name} is already running (pid {self.pid})")
        super().start(cwd)
        try:
            poll(self._ready, START_TIMEOUT_S, f"{self.name} to be ready at {self.ready_url}")
        except BaseException:
            self.stop()
            raise

    def _ready(self) -> bool:
        if self._proc is not None and self._proc.poll() is not None:
            pytest.fail(
                f"{self.name} exited with {self._proc.returncode} during start-up:\n{self.log_tail()}",
                pytrace=False,
            )
        try:
            status, _ = http_get(self.ready_url, timeout=1.0)
        except OSError:
            return False
        return status == 200

    def log_tail(self) -> str:
        try:
            data = self.log_path.read_bytes()
        except FileNotFoundError:
            return "(no log)"
        cut = f"[... {len(data) - LOG_TAIL_BYTES} bytes cut ...]\n" if len(data) > LOG_TAIL_BYTES else ""
        return cut + data[-LOG_TAIL_BYTES:].decode("utf-8", "replace")


class NatsServer(RealProcess):
    """nats-server (JetStream on unless asked otherwise); ``stop()``/``start()`` keep ports and store."""

    def __init__(self, workdir: Path, *, jetstream: bool = True) -> None:
        self.port = free_port()
        self.monitor_port = free_port()
        self.store_dir = workdir / "jetstream"
        self.store_dir.mkdir(parents=True, exist_ok=True)
        argv = [
            require_binary("nats-server"),
            "-a",
            LOOPBACK,
            "-p",
            str(self.port),
            "-m",
            str(self.monitor_port),
        ]
        if jetstream:
            argv += ["-js", "-sd", str(self.store_dir)]
        # /healthz answers 200 only once JetStream (when enabled) is up.
        super().__init__("nats-server", argv, workdir / "nats-server.log", self.monitor_url + "/healthz")

    @property
    def client_url(self) -> str:
        return f"nats://{LOOPBACK}:{self.port}"

    @property
    def monitor_url(self) -> str:
        return f"http://{LOOPBACK}:{self.monitor_port}"


class PrometheusServer(RealProcess):
    """Prometheus scraping itself (job ``prometheus``) and ``targets``, evaluating ``rule_files``, at 1s."""

    def __init__(
        self,
        workdir: Path,
        *,
        targets: Mapping[str, Sequence[str]],
        rule_files: Sequence[Path],
        alertmanagers: Sequence[str],
    ) -> None:
        self.port = free_port()
        scrape = {"prometheus": [f"{LOOPBACK}:{self.port}"], **{k: list(v) for k, v in targets.items()}}
        config: dict[str, Any] = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
            "rule_files": [str(p) for p in rule_files],
            "scrape_configs": [{"job_name": job, "static_configs": [{"targets": t}]} for job, t in scrape.items()],
        }
        if alertmanagers:
            config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": list(alertmanagers)}]}]}
        self.config_path = workdir / "prometheus.yml"
        self.config_path.write_text(json.dumps(config, indent=2))  # JSON is YAML
        argv = [
            require_binary("prometheus"),
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address={LOOPBACK}:{self.port}",
            "--web.enable-lifecycle",
        ]
        super().__init__("prometheus", argv, workdir / "prometheus.log", self.url + "/-/ready")

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The instant vector ``expr`` evaluates to now."""
        status, body = http_get(f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': expr})}")
        payload = json.loads(body)
        if status != 200 or payload.get("status") != "success":
            raise AssertionError(f"query {expr!r} failed: {status} {body[:500]!r}")
        result: list[dict[str, Any]] = payload["data"]["result"]
        return result

    def wait_for_samples(self, expr: str, timeout: float = 15.0) -> list[dict[str, Any]]:
        """Poll until ``expr`` returns at least one sample (e.g. after the first scrapes)."""
        found: list[dict[str, Any]] = []

        def has_samples() -> bool:
            found[:] = self.query(expr)
            return bool(found)

        poll(has_samples, timeout, f"samples for {expr!r} in Prometheus")
        return found


class AlertmanagerServer(RealProcess):
    """Alertmanager with clustering off, its own storage dir and the given configuration."""

    def __init__(self, workdir: Path, *, config: str) -> None:
        self.port = free_port()
        self.config_path = workdir / "alertmanager.yml"
        self.config_path.write_text(config)
        argv = [
            require_binary("prometheus-alertmanager"),
            f"--config.file={self.config_path}",
            f"--storage.path={workdir / 'data'}",
            f"--web.listen-address={LOOPBACK}:{self.port}",
            "--cluster.listen-address=",  # no gossip: a single, loopback-only instance
        ]
        super().__init__("alertmanager", argv, workdir / "alertmanager.log", self.url + "/-/ready")

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"


class RealProcesses:
    """Starts servers for one test under its tmp dir and stops them all (newest first) at the end."""

    def __init__(self, tmp_path: Path) -> None:
        self._tmp_path = tmp_path
        self.started: list[RealProcess] = []

    def _workdir(self, name: str) -> Path:
        path = self._tmp_path / f"{name}-{len(self.started)}"
        path.mkdir(parents=True)
        return path

    def _start(self, proc: _P) -> _P:
        self.started.append(proc)  # before start(): a failed start-up still gets its log attached
        proc.start()
        return proc

    def nats(self, *, jetstream: bool = True) -> NatsServer:
        return self._start(NatsServer(self._workdir("nats"), jetstream=jetstream))

    def prometheus(
        self,
        targets: Mapping[str, Sequence[str]] | None = None,
        rule_files: Sequence[Path] = (),
        alertmanagers: Sequence[str] = (),
    ) -> PrometheusServer:
        workdir = self._workdir("prometheus")
        return self._start(
            PrometheusServer(workdir, targets=targets or {}, rule_files=rule_files, alertmanagers=alertmanagers)
        )

    def alertmanager(self, config: str) -> AlertmanagerServer:
        return self._start(AlertmanagerServer(self._workdir("alertmanager"), config=config))

    def stop_all(self) -> None:
        errors: list[BaseException] = []
        for proc in reversed(self.started):
            try:
                proc.stop()
            except BaseException as exc:  # keep stopping the others
                errors.append(exc)
        if errors:
            raise errors[0]


def attach_logs(item: pytest.Item, report: pytest.TestReport) -> None:
    """Add the log tail of every real process the test used to the report of a failed phase.

    The processes are found among the test's fixture values (its whole closure), whatever their scope.
    """
    if not report.failed:
        return
    funcargs: dict[str, object] = getattr(item, "funcargs", {})
    groups = {id(v): v for v in funcargs.values() if isinstance(v, RealProcesses)}
    for procs in groups.values():
        for proc in procs.started:
            report.sections.append((f"{proc.name} log ({proc.log_path})", proc.log_tail()))
