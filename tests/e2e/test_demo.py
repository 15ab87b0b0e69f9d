"""`remediator demo` run as a person runs it: the whole tour to the end with every scenario's outcome
printed, and Ctrl-C in the middle stops every process it started and removes its directory."""

from __future__ import annotations

import io
import os
import re
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from demo import processes, stack, tour

SCENARIOS = (
    "NATS server killed",
    "circuit breaker open, provider healthy",
    "circuit breaker open, provider failing",
    "JetStream backlog rising",
)
REPORT_LINK = re.compile(r"http://127\.0\.0\.1:\d+/executions/ex-[0-9a-f]+-[0-9a-f]+")


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class DemoProcess:
    """`python -m service.cli demo` with its output collected line by line, never waited on unbounded."""

    def __init__(self, *args: str) -> None:
        stack.find_binaries()  # fails the test (not skips) when a binary is missing, naming the packages
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "demo", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=stack.REPO,
            text=True,
            # as a terminal's foreground job gets it: pytest started by a script's `&` inherits SIGINT
            # ignored, and Python then keeps it ignored, so the Ctrl-C test would send it for nothing
            preexec_fn=_default_sigint,
        )
        self.lines: list[str] = []

    def read_until(self, done: Callable[[str], bool], timeout: float) -> str:
        """Collect lines until one satisfies `done` (returned) or the output ends; fails after `timeout`."""
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as selector:
            selector.register(self.proc.stdout, selectors.EVENT_READ)
            for _ in range(100_000):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                if not selector.select(min(left, 1.0)):
                    continue
                line = self.proc.stdout.readline()
                if line == "":
                    return ""
                self.lines.append(line.rstrip("\n"))
                if done(line):
                    return line
        pytest.fail(f"demo: nothing matched within {timeout:g}s; output so far:\n{self.output}", pytrace=False)

    def wait(self, timeout: float) -> int:
        self.read_until(lambda _line: False, timeout)  # to the end of its output
        return self.proc.wait(timeout=30)

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def pids(self) -> list[int]:
        [line] = [line for line in self.lines if line.startswith("stack up:")]
        return [int(p) for p in re.findall(r"pid (\d+)", line)]

    def workdir(self) -> Path:
        match = re.search(r"the remediator in (\S+)", self.output)
        assert match, self.output
        return Path(match.group(1))

    def stop(self) -> None:
        """By PID: SIGTERM (the demo then stops what it started), SIGKILL as a last resort."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.fixture
def run_demo() -> Iterator[Callable[..., DemoProcess]]:
    started: list[DemoProcess] = []

    def start(*args: str) -> DemoProcess:
        started.append(DemoProcess(*args))
        return started[-1]

    yield start
    for process in started:
        process.stop()


def gone(pid: int) -> bool:
    return not processes.pid_alive(pid)


def assert_cleaned_up(process: DemoProcess) -> None:
    pids = process.pids()
    assert len(pids) == 5, process.output
    alive = {pid: Path(f"/proc/{pid}/cmdline").read_bytes()[:200] for pid in pids if not gone(pid)}
    assert alive == {}, process.output
    workdir = process.workdir()
    assert not workdir.exists(), (sorted(str(p) for p in workdir.rglob("*"))[:50], process.output)
    assert "stopped everything, removed" in process.lines[-1]


@pytest.mark.timeout(240)
def test_demo_tour_prints_every_outcome_and_cleans_up(run_demo: Callable[..., DemoProcess]) -> None:
    process = run_demo()
    code = process.wait(timeout=200)
    output = process.output
    assert code == 0, output
    assert f"tour finished: {len(SCENARIOS)} of {len(SCENARIOS)} scenarios as expected" in output
    finished = next(i for i, line in enumerate(process.lines) if line.startswith("tour finished"))
    summary = process.lines[finished + 1 :]
    for number, name in enumerate(SCENARIOS, start=1):
        [line] = [s for s in summary if s.strip().startswith(f"scenario {number} {name}: ")]
        assert ": OK (expected" in line and REPORT_LINK.search(line), line
    # It said what happened as it happened: alerts, remediations, steps, escalations, resolutions.
    for seen in (
        "Prometheus: alert NatsServerDown firing",
        "remediation started",
        "step steps/nats_start: ok",
        "state -> succeeded (verified)",
        "escalation: JetStream backlog on DECIDE/router_decide_consumer",
        "Alertmanager: resolved notification for NatsServerDown received",
        "fault -> verified fix",
    ):
        assert seen in output, f"{seen!r} not in the demo's output:\n{output}"
    assert_cleaned_up(process)


@pytest.mark.timeout(120)
def test_demo_ctrl_c_stops_everything_it_started(run_demo: Callable[..., DemoProcess]) -> None:
    process = run_demo()
    process.read_until(lambda line: line.startswith("stack up:"), timeout=60)
    process.read_until(lambda line: "fault:" in line, timeout=30)
    process.proc.send_signal(signal.SIGINT)  # what Ctrl-C in its terminal sends
    assert process.wait(timeout=60) == 130, process.output
    assert "interrupted (SIGINT): stopping everything" in process.output
    assert_cleaned_up(process)


def test_missing_binaries_say_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    real_which = stack.shutil.which
    monkeypatch.setattr(
        stack.shutil, "which", lambda name, path=None: None if name == "prometheus" else real_which(name, path=path)
    )
    out = io.StringIO()
    assert tour.run_demo(None, keep=False, out=out) == 2
    message = out.getvalue()
    assert "prometheus (Debian package prometheus)" in message
    assert "apt-get install nats-server prometheus prometheus-alertmanager" in message
    assert os.environ.get("PATH") is not None
