"""The remediator SIGKILLed in the middle of the NATS restart, on the real stack (issue 18): after the
restart no step of the old run is still running when the run resumes, the run continues where it
stopped, and NATS ends with a correct pid file that nats_stop.sh can use. Killed during verification,
the resumed run only verifies: NATS is not restarted a second time."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from demo.processes import pid_alive, poll
from demo.stack import Stack
from e2e.stack import finished_report

RULE = "nats-process-down"


def _script_pids(stack: Stack, name: str) -> list[int]:
    """Processes running this stack's runbook script `name` now (its state dir in their environment)."""
    pids = []
    mine = f"BEAMLINE_STATE_DIR={stack.state_dir}".encode()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline, environ = (entry / "cmdline").read_bytes(), (entry / "environ").read_bytes()
            except OSError:
                continue
            if name.encode() in cmdline and mine in environ.split(b"\0") and pid_alive(int(entry.name)):
                pids.append(int(entry.name))
    return pids


def _run(stack: Stack) -> dict[str, Any] | None:
    rows = [r for r in stack.executions(rule=RULE) if r["state"] != "refused"]
    return rows[0] if rows else None


@pytest.mark.timeout(150)
def test_killed_during_nats_start_ends_the_old_script_and_resumes_with_a_correct_pid_file(stacks: Any) -> None:
    stack: Stack = stacks()
    stack.kill_nats()
    # catch the run inside nats_start.sh and freeze that script (its whole group), so it is surely
    # still running when the remediator dies: as a script waiting for a slow server would be
    deadline = time.monotonic() + 60
    frozen: list[int] = []
    while not frozen and time.monotonic() < deadline:
        frozen = _script_pids(stack, "nats_start.sh")
        if not frozen:
            time.sleep(0.002)
    assert frozen, "nats_start.sh never ran"
    groups = {os.getpgid(pid) for pid in frozen}
    try:
        for group in groups:
            os.killpg(group, signal.SIGSTOP)
        run = _run(stack)  # the script is frozen: the run stays in nats_start
        assert run is not None
        stack.kill_remediator()

        stack.start_remediator()
        # the old script's group was ended before the run resumed; none of it is left
        assert not any(pid_alive(pid) for pid in frozen)
    finally:  # never leave a frozen script behind, whatever failed
        for group in groups:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGKILL)
    report = poll(lambda: finished_report(stack, run["id"]), 60, "the resumed NATS restart to finish")
    assert report["execution"]["state"] == "succeeded", report
    [ended] = [e["message"] for e in report["timeline"] if e["kind"] == "recovery"]
    assert "step nats_start was still running after the restart" in ended
    [resumed] = [e["message"] for e in report["timeline"] if e["kind"] == "resume"]
    assert "nats_stop" in resumed  # completed before the crash: not run again
    assert [s["name"] for s in report["steps"] if s["phase"] == "steps"].count("nats_stop") == 1

    # NATS runs from a pid file that names it, and the runbook's stop script can stop it
    pid = stack.nats_pid()
    assert pid is not None
    stopped = stack.run_script("nats_stop.sh")
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    poll(lambda: not pid_alive(pid), 20, "nats-server stopped by nats_stop.sh")


@pytest.mark.timeout(150)
def test_killed_during_verification_resumes_verifying_and_does_not_restart_nats_again(stacks: Any) -> None:
    stack: Stack = stacks()
    stack.kill_nats()

    def verifying() -> dict[str, Any] | None:
        run = _run(stack)
        return run if run is not None and run["state"] == "verifying" else None

    run = poll(verifying, 60, "the NATS restart to verify", every=0.02)
    stack.kill_remediator()
    restarted_pid = stack.nats_pid()
    assert restarted_pid is not None

    stack.start_remediator()
    report = poll(lambda: finished_report(stack, run["id"]), 60, "the resumed verification")
    assert (report["execution"]["state"], report["execution"]["reason"]) == ("succeeded", "verified"), report
    [resumed] = [e["message"] for e in report["timeline"] if e["kind"] == "resume"]
    assert "verification" in resumed
    assert stack.nats_pid() == restarted_pid  # not restarted a second time
    names = [s["name"] for s in report["steps"] if s["phase"] == "steps"]
    assert names.count("nats_stop") == 1 and names.count("nats_start") == 1
