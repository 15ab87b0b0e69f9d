"""The runbook scripts in demo/scripts against a real nats-server and the simulated router.

Every test gets its own state dir and free loopback ports through the BEAMLINE_* variables; whatever
the scripts started is stopped by the PID in their pid files when the test ends, pass or fail.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest
from support.realprocs import LOOPBACK, RealProcesses, free_port, http_get, require_binary

from demo.processes import pid_alive, poll, stop_pid

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "demo" / "scripts"
SCRIPT_TIMEOUT_S = 60


class Scripts:
    def __init__(self, state_dir: Path) -> None:
        self.state = state_dir
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin") + ":/usr/sbin",
            "HOME": str(state_dir),
            "BEAMLINE_STATE_DIR": str(state_dir),
            "BEAMLINE_NATS_PORT": str(free_port()),
            "BEAMLINE_NATS_MONITOR_PORT": str(free_port()),
            "BEAMLINE_ROUTER_TCP_PORT": str(free_port()),
            "BEAMLINE_ROUTER_HTTP_PORT": str(free_port()),
            "BEAMLINE_PYTHON": sys.executable,
            "BEAMLINE_START_TIMEOUT": "20",
        }

    def run(self, name: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(SCRIPTS / name), *args],
            env={**self.env, **env},
            cwd=self.state,
            capture_output=True,
            text=True,
            timeout=SCRIPT_TIMEOUT_S,
            check=False,
        )

    def ok(self, name: str, *args: str) -> str:
        result = self.run(name, *args)
        assert result.returncode == 0, f"{name} {args}: rc={result.returncode}\n{result.stdout}{result.stderr}"
        return result.stdout

    def pid(self, which: str) -> int:
        return int((self.state / f"{which}.pid").read_text())

    @property
    def nats_url(self) -> str:
        return f"nats://{LOOPBACK}:{self.env['BEAMLINE_NATS_PORT']}"

    @property
    def router_url(self) -> str:
        return f"http://{LOOPBACK}:{self.env['BEAMLINE_ROUTER_HTTP_PORT']}"


@pytest.fixture
def scripts(tmp_path: Path) -> Iterator[Scripts]:
    require_binary("nats-server")
    s = Scripts(tmp_path / "state")
    s.state.mkdir()
    try:
        yield s
    finally:
        for which, marker in (("router", "demo.router"), ("nats", "nats-server")):
            pid_file = s.state / f"{which}.pid"
            if pid_file.exists():
                pid = int(pid_file.read_text())
                cmdline = Path(f"/proc/{pid}/cmdline")
                if cmdline.exists() and marker in cmdline.read_bytes().decode(errors="replace"):
                    stop_pid(pid)


def test_nats_start_status_stop_cycle(scripts: Scripts) -> None:
    result = scripts.run("nats_status.sh")
    assert (result.returncode, result.stdout) == (1, "Not Running\n")

    assert "Started nats-server" in scripts.ok("nats_start.sh")
    pid = scripts.pid("nats")
    assert pid_alive(pid)
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert scripts.env["BEAMLINE_NATS_PORT"].encode() in cmdline and b"-js" in cmdline
    assert (scripts.state / "data" / "jetstream").is_dir()  # the runbook's data/jetstream
    assert scripts.ok("nats_status.sh") == "Running\n"
    assert "already running" in scripts.ok("nats_start.sh")
    assert scripts.pid("nats") == pid

    assert f"Stopped nats-server (pid {pid})" in scripts.ok("nats_stop.sh")
    assert not pid_alive(pid)
    assert not (scripts.state / "nats.pid").exists()
    result = scripts.run("nats_status.sh")
    assert (result.returncode, result.stdout) == (1, "Not Running\n")
    assert "not running" in scripts.ok("nats_stop.sh")


def test_nats_status_reports_failed_health_check_without_jetstream(
    scripts: Scripts, real_processes: RealProcesses
) -> None:
    plain = real_processes.nats(jetstream=False)  # /healthz says ok, /jsz says disabled
    result = scripts.run("nats_status.sh", BEAMLINE_NATS_MONITOR_PORT=str(plain.monitor_port))
    assert (result.returncode, result.stdout) == (2, "Health check failed\n")
    assert "JetStream" in result.stderr


def test_nats_stop_kills_a_server_ignoring_sigterm_and_never_a_stranger(scripts: Scripts) -> None:
    # Ignores SIGTERM, then says so by creating the file named by its first argument.
    ignore_term = (
        "import pathlib, signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
        " pathlib.Path(sys.argv[1]).touch(); time.sleep(60)"
    )
    stubborn_ready, stranger_ready = scripts.state / "stubborn.ready", scripts.state / "stranger.ready"
    # "nats-server" in its command line makes it look like ours; the stranger's does not.
    stubborn = subprocess.Popen([sys.executable, "-c", ignore_term, str(stubborn_ready), "nats-server"])
    stranger = subprocess.Popen([sys.executable, "-c", ignore_term, str(stranger_ready)])
    try:
        poll(lambda: stubborn_ready.exists() and stranger_ready.exists(), 10, "stubs ignoring SIGTERM")
        (scripts.state / "nats.pid").write_text(f"{stubborn.pid}\n")
        result = scripts.run("nats_stop.sh", BEAMLINE_STOP_TIMEOUT="1")
        assert result.returncode == 0, result.stderr
        assert "SIGKILL" in result.stderr
        assert stubborn.wait(5) == -signal.SIGKILL

        (scripts.state / "nats.pid").write_text(f"{stranger.pid}\n")
        assert "not running" in scripts.ok("nats_stop.sh")
        assert stranger.poll() is None  # untouched
        assert not (scripts.state / "nats.pid").exists()  # the stale pid file is gone
    finally:
        for proc in (stubborn, stranger):
            proc.kill()
            proc.wait(5)


def test_a_pid_file_is_removed_only_by_whoever_it_still_names(scripts: Scripts, tmp_path: Path) -> None:
    """An interrupted run's script (its server died) must not delete the file of the server a later
    run started: after that, nothing could stop the new one (nats_stop.sh finds no pid)."""
    pid_file = tmp_path / "nats.pid"

    def remove(pid: str) -> None:
        command = 'source "$1"; remove_pidfile "$2" "$3"'
        result = subprocess.run(
            ["bash", "-c", command, "-", str(SCRIPTS / "_common.sh"), str(pid_file), pid],
            env=scripts.env,
            capture_output=True,
            text=True,
            timeout=SCRIPT_TIMEOUT_S,
            check=False,
        )
        assert result.returncode == 0, result.stderr

    pid_file.write_text("4242\n")  # the newer server's
    remove("1717")  # the older script's own, dead server
    assert pid_file.read_text() == "4242\n"
    remove("4242")
    assert not pid_file.exists()


def test_router_scripts_and_circuit_breaker_admin(scripts: Scripts) -> None:
    scripts.ok("nats_start.sh")
    setup = json.loads(scripts.ok("setup_nats_streams.sh"))
    assert setup["stream"] == "DECIDE" and setup["consumer"] == "router_decide_consumer"
    assert "Started router" in scripts.ok("router_start.sh")
    pid = scripts.pid("router")
    token = scripts.state / "router-admin.token"
    assert stat.S_IMODE(token.stat().st_mode) == 0o600 and len(token.read_text().strip()) >= 32
    # Runbook §3 step 7: ports 9000 and 9001 (here: their configured stand-ins) accept connections.
    for port in ("BEAMLINE_ROUTER_TCP_PORT", "BEAMLINE_ROUTER_HTTP_PORT"):
        socket.create_connection((LOOPBACK, int(scripts.env[port])), timeout=5).close()

    status = json.loads(scripts.ok("circuit_breaker.sh", "status", "tenant_a", "openai"))
    assert status["state"] == "closed"
    half = json.loads(scripts.ok("circuit_breaker.sh", "force_recovery_to_half_open", "tenant_a", "openai"))
    assert half["state"] == "half_open"

    def closed_again() -> bool:
        state: str = json.loads(scripts.ok("circuit_breaker.sh", "status", "tenant_a", "openai"))["state"]
        return state == "closed"

    poll(closed_again, 15, "half-open breaker to close on a healthy provider")
    assert json.loads(scripts.ok("circuit_breaker.sh", "force_recovery", "tenant_a", "openai"))["state"] == "closed"

    for args, message in (
        (("status", "nobody", "openai"), "HTTP 404"),
        (("status", "../admin", "openai"), "invalid tenant/provider"),
        (("reboot", "tenant_a", "openai"), "unknown action"),
        (("status", "tenant_a"), "usage"),
        (("status", "$(touch pwned)", "openai"), "invalid tenant/provider"),
    ):
        result = scripts.run("circuit_breaker.sh", *args)
        assert result.returncode == 1 and message in result.stderr, (args, result.stderr)
    assert not (scripts.state / "pwned").exists()
    wrong = scripts.state / "wrong.token"
    wrong.write_text("not-the-token-000000\n")
    result = scripts.run(
        "circuit_breaker.sh", "status", "tenant_a", "openai", BEAMLINE_ROUTER_ADMIN_TOKEN_FILE=str(wrong)
    )
    assert result.returncode == 1 and "HTTP 401" in result.stderr

    assert f"Stopped router (pid {pid})" in scripts.ok("router_stop.sh")
    assert not pid_alive(pid)
    with pytest.raises(OSError):
        http_get(scripts.router_url + "/healthz", timeout=1)
    assert "not running" in scripts.ok("router_stop.sh")
    scripts.ok("nats_stop.sh")


async def test_jetstream_purge_empties_the_stream(scripts: Scripts) -> None:
    scripts.ok("nats_start.sh")
    scripts.ok("setup_nats_streams.sh")
    nc = await nats.connect(scripts.nats_url, connect_timeout=5, allow_reconnect=False)
    try:
        js = nc.jetstream(timeout=5)
        for i in range(7):
            await js.publish("router.decide.request", f"m{i}".encode(), timeout=5)
    finally:
        await nc.close()
    result = json.loads(scripts.ok("jetstream_purge.sh", "DECIDE"))
    assert result == {"stream": "DECIDE", "purged": 7, "messages": 0}
    for bad in ("", "DECIDE; rm -rf /", "a.b"):
        bad_run = scripts.run("jetstream_purge.sh", bad)
        assert bad_run.returncode == 1 and "invalid stream name" in bad_run.stderr
    missing = scripts.run("jetstream_purge.sh", "NOPE")
    assert missing.returncode != 0 and "not found" in missing.stderr


def test_clean_state_restart_sequence(scripts: Scripts) -> None:
    """Runbook §3 in order, with step 6 starting the router (the runbook's text says nats_start.sh)."""
    scripts.ok("nats_start.sh")
    scripts.ok("router_start.sh")
    router_pid, nats_pid = scripts.pid("router"), scripts.pid("nats")

    scripts.ok("router_stop.sh")  # 1
    scripts.ok("nats_stop.sh")  # 2
    shutil.rmtree(scripts.state / "data" / "jetstream")  # 3 (optional, DANGER)
    scripts.ok("nats_start.sh")  # 4
    assert json.loads(scripts.ok("setup_nats_streams.sh"))["pending"] == 0  # 5
    scripts.ok("router_start.sh")  # 6
    assert not pid_alive(router_pid) and not pid_alive(nats_pid)
    assert scripts.pid("router") != router_pid
    for port in ("BEAMLINE_ROUTER_TCP_PORT", "BEAMLINE_ROUTER_HTTP_PORT"):  # 7
        socket.create_connection((LOOPBACK, int(scripts.env[port])), timeout=5).close()

    def connected() -> bool:
        return b"router_nats_connection_status 1.0" in http_get(scripts.router_url + "/metrics")[1]

    poll(connected, 15, "router connected to the fresh NATS")
    assert scripts.ok("nats_status.sh") == "Running\n"


@pytest.mark.parametrize(
    ("script", "missing"),
    [
        ("nats_stop.sh", "BEAMLINE_STATE_DIR"),
        ("nats_start.sh", "BEAMLINE_NATS_MONITOR_PORT"),
        ("router_start.sh", "BEAMLINE_ROUTER_TCP_PORT"),
        ("router_start.sh", "BEAMLINE_NATS_PORT"),
        ("circuit_breaker.sh", "BEAMLINE_ROUTER_HTTP_PORT"),
        ("jetstream_purge.sh", "BEAMLINE_NATS_PORT"),
    ],
)
def test_a_script_without_what_it_acts_on_stops_naming_the_variable(tmp_path: Path, script: str, missing: str) -> None:
    """No hidden default: a playbook that forgets a port must not act on whatever listens on the demo's."""
    state = tmp_path / "state"
    env = {**Scripts(state).env}
    del env[missing]
    result = subprocess.run(
        [str(SCRIPTS / script), "x", "y", "z"],
        env=env,
        capture_output=True,
        text=True,
        timeout=SCRIPT_TIMEOUT_S,
        check=False,
    )
    assert result.returncode != 0
    assert f"{missing}: not set:" in result.stderr and "no default" in result.stderr
    assert not state.exists()  # stopped before touching anything
