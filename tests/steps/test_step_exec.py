"""``exec`` step with real processes."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from service.steps import StepContext
from service.steps.exec import Spec, run
from service.steps.exec_env import ALERT_VALUE_LIMIT, EXEC_BUDGET, MAX_ARG_STRLEN, MAX_NOTES, SAFE_PATH, env_suffix
from service.steps.groups import TERM_GRACE_S

PY = sys.executable


def ctx(**kw: Any) -> StepContext:
    return StepContext(execution_id="ex-1", **kw)


def py(code: str, **kw: Any) -> Spec:
    return Spec(type="exec", argv=[PY, "-c", code], **kw)


def dead(pid: int) -> bool:
    """Gone, or a zombie nobody has reaped yet (it runs nothing any more)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def wait_dead(pids: list[int], timeout: float = 5.0) -> list[int]:
    """Poll until every pid is dead; the ones still alive at the deadline."""
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / 0.02) + 1):
        alive = [p for p in pids if not dead(p)]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.02)
    return [p for p in pids if not dead(p)]


def wait_file(path: Path, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / 0.02) + 1):
        if path.exists() and path.read_text().endswith("\n"):
            return path.read_text()
        if time.monotonic() > deadline:
            break
        time.sleep(0.02)
    raise AssertionError(f"{path} not written within {timeout}s")


@pytest.mark.parametrize(("code", "expect", "ok"), [(0, [0], True), (3, [0], False), (3, [0, 3], True)])
async def test_exit_code_expectations(code: int, expect: list[int], ok: bool) -> None:
    out = await run(py(f"raise SystemExit({code})", expect_exit=expect), ctx())
    assert (out.ok, out.status, out.exit_code) == (ok, "ok" if ok else "failed", code)
    assert out.data["exit_code"] == code
    if not ok:
        assert "exited 3, expected 0" in out.summary


async def test_stdout_and_stderr_both_captured() -> None:
    code = "import sys; print('to out', flush=True); print('to err', file=sys.stderr, flush=True)"
    out = await run(py(code), ctx())
    assert out.ok
    assert out.output == "to out\nto err\n"


async def test_output_keeps_a_bounded_tail() -> None:
    code = "import sys\nfor i in range(20000): sys.stdout.write('line %06d\\n' % i)\nprint('THE END')"
    out = await run(py(code), ctx(output_limit=1000))
    total = 20000 * 12 + len("THE END\n")
    assert out.data["output_bytes"] == total
    head, kept = out.output.split("\n", 1)
    assert head == f"[... {total - 1000} bytes cut ...]"
    assert len(kept.encode()) == 1000
    assert kept.endswith("line 019999\nTHE END\n")


async def test_alert_labels_annotations_and_execution_id_in_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REMEDIATOR_WEBHOOK_TOKEN", "secret")
    monkeypatch.setenv("ALERT_LABEL_STALE", "from the service's own environment")
    monkeypatch.setenv("HOME", "/home/remediator")
    monkeypatch.setenv("LC_TIME", "C.UTF-8")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not for steps")
    monkeypatch.setenv("PATH", "/tmp/evil:" + os.environ["PATH"])
    labels = {"alertname": "NatsDown", "my-label.x": "v1", "instance": "127.0.0.1:4222"}
    annotations = {"summary": "NATS is down", "runbook_url": "https://x/y?a=b"}
    spec = py("import json, os; print(json.dumps(dict(os.environ)))", env={"EXTRA": "e"})
    out = await run(spec, ctx(labels=labels, annotations=annotations))
    env = json.loads(out.output)
    assert env["ALERT_LABEL_ALERTNAME"] == "NatsDown"
    assert env["ALERT_LABEL_MY_LABEL_X"] == "v1"
    assert env["ALERT_LABEL_INSTANCE"] == "127.0.0.1:4222"
    assert env["ALERT_ANNOTATION_SUMMARY"] == "NATS is down"
    assert env["ALERT_ANNOTATION_RUNBOOK_URL"] == "https://x/y?a=b"
    assert env["REMEDIATOR_EXECUTION_ID"] == "ex-1"
    assert env["EXTRA"] == "e"
    assert env["PATH"] == SAFE_PATH
    assert (env["HOME"], env["LC_TIME"]) == ("/home/remediator", "C.UTF-8")  # the default allowlist
    assert "AWS_SECRET_ACCESS_KEY" not in env  # not allowlisted: not inherited by default
    assert "REMEDIATOR_WEBHOOK_TOKEN" not in env
    assert "ALERT_LABEL_STALE" not in env


async def test_inherit_env_true_passes_all_but_private_and_a_list_adds_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REMEDIATOR_OPERATOR_TOKEN", "op-secret")
    monkeypatch.setenv("BEAMLINE_STATE_DIR", "/var/lib/beamline")
    monkeypatch.setenv("BEAMLINE_NATS_PORT", "4222")
    monkeypatch.setenv("OTHER_VAR", "other")
    monkeypatch.setenv("HOME", "/home/remediator")
    dump = "import json, os; print(json.dumps(dict(os.environ)))"
    everything = json.loads((await run(py(dump, inherit_env=True), ctx())).output)
    assert (everything["OTHER_VAR"], everything["BEAMLINE_NATS_PORT"]) == ("other", "4222")
    assert "REMEDIATOR_OPERATOR_TOKEN" not in everything
    listed = json.loads((await run(py(dump, inherit_env=["BEAMLINE_*", "OTHER_VAR"]), ctx())).output)
    assert (listed["BEAMLINE_STATE_DIR"], listed["OTHER_VAR"], listed["HOME"]) == (
        "/var/lib/beamline",
        "other",
        "/home/remediator",
    )
    assert "REMEDIATOR_OPERATOR_TOKEN" not in listed
    only = json.loads((await run(py(dump, inherit_env=["BEAMLINE_NATS_PORT"]), ctx())).output)
    assert "BEAMLINE_NATS_PORT" in only and "BEAMLINE_STATE_DIR" not in only and "OTHER_VAR" not in only


@pytest.mark.parametrize("entry", ["REMEDIATOR_OPERATOR_TOKEN", "REMEDIATOR_*", "ALERT_LABEL_X", "A-B", "*", "A*B", ""])
def test_inherit_env_entries_are_checked(entry: str) -> None:
    with pytest.raises(ValueError, match="inherit_env"):
        Spec(type="exec", argv=["true"], inherit_env=[entry])


async def test_no_inherited_env() -> None:
    spec = py("import json, os; print(json.dumps(dict(os.environ)))", env={"A": "1"}, inherit_env=False)
    out = await run(spec, ctx(labels={"job": "nats"}))
    env = json.loads(out.output)
    env.pop("LC_CTYPE", None)  # Python may set it for itself on start-up
    assert env == {"A": "1", "ALERT_LABEL_JOB": "nats", "PATH": SAFE_PATH, "REMEDIATOR_EXECUTION_ID": "ex-1"}


# Prints a digest of each alert variable it was given and the size of its whole argv + environment.
ALERT_ENV_DUMP = """
import hashlib, json, os, sys
alert = {k.decode(): hashlib.sha256(v).hexdigest() for k, v in os.environb.items() if k.startswith(b"ALERT_")}
block = sum(len(a) + 1 + 8 for a in sys.argv) + sum(len(k) + len(v) + 2 + 8 for k, v in os.environb.items())
print(json.dumps({"alert": alert, "block": block}))
"""


def alert_env(output: str) -> dict[str, Any]:
    dumped: dict[str, Any] = json.loads(output.splitlines()[-1])
    return dumped


def digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


async def test_alert_values_the_kernel_would_refuse_are_left_out_or_cut_with_a_note() -> None:
    labels = {"alertname": "A", "nul": "before\x00after", "huge": "x" * (MAX_ARG_STRLEN + 10), "lone": "\ud800"}
    annotations = {"description": "é" * ALERT_VALUE_LIMIT}  # 2 bytes a character: cut between characters
    out = await run(py(ALERT_ENV_DUMP), ctx(labels=labels, annotations=annotations))
    assert out.ok, out.summary
    seen = alert_env(out.output)["alert"]
    assert seen["ALERT_LABEL_ALERTNAME"] == digest("A")
    assert "ALERT_LABEL_NUL" not in seen and "ALERT_LABEL_LONE" not in seen
    assert seen["ALERT_LABEL_HUGE"] == digest("x" * ALERT_VALUE_LIMIT)
    assert seen["ALERT_ANNOTATION_DESCRIPTION"] == digest("é" * (ALERT_VALUE_LIMIT // 2))
    notes = [
        f"ALERT_LABEL_HUGE cut to its first {ALERT_VALUE_LIMIT} of {MAX_ARG_STRLEN + 10} bytes",
        "ALERT_LABEL_LONE not set: its value cannot be encoded (it holds a lone surrogate)",
        "ALERT_LABEL_NUL not set: its value contains a NUL byte",
        f"ALERT_ANNOTATION_DESCRIPTION cut to its first {ALERT_VALUE_LIMIT} of {2 * ALERT_VALUE_LIMIT} bytes",
    ]
    assert out.data["env_notes"] == notes
    assert out.summary == (
        f"{PY} exited 0 (4 alert variables left out or cut: {'; '.join(notes[:3])}; and 1 more, in data.env_notes)"
    )
    assert out.output.startswith('{"alert": ')  # the output is what the program printed, nothing added


async def test_thousands_of_large_labels_stay_within_the_budget_and_the_step_runs() -> None:
    labels = {f"l{i:05d}": "v" * 4096 for i in range(3000)}  # 12 MB: six times the kernel's ARG_MAX
    out = await run(py(ALERT_ENV_DUMP), ctx(labels=labels))
    assert out.ok, out.summary
    dumped = alert_env(out.output)
    assert dumped["block"] <= EXEC_BUDGET
    passed = len(dumped["alert"])
    assert 200 < passed < 3000
    assert sorted(dumped["alert"]) == [f"ALERT_LABEL_L{i:05d}" for i in range(passed)]  # in name order
    assert out.data["env_notes_total"] == 3000 - passed
    assert len(out.data["env_notes"]) == MAX_NOTES
    first = f"ALERT_LABEL_L{passed:05d} not set: argv and environment would exceed {EXEC_BUDGET} bytes"
    assert out.data["env_notes"][0] == first
    assert out.summary.startswith(f"{PY} exited 0 ({3000 - passed} alert variables left out or cut: {first}; ")
    assert out.summary.endswith(f"; and {3000 - passed - 3} more, in data.env_notes)")


@pytest.mark.parametrize(
    ("spec", "summary"),
    [
        (Spec(type="exec", argv=["echo", "ok", "nul\x00byte"]), "echo not started: argv[2] contains a NUL byte"),
        (Spec(type="exec", argv=["echo"], env={"X": "a\x00"}), "echo not started: env X contains a NUL byte"),
        (Spec(type="exec", argv=["echo"], cwd="/tmp\x00"), "echo not started: cwd contains a NUL byte"),
        (
            Spec(type="exec", argv=["echo"], env={"X": "y" * MAX_ARG_STRLEN}),
            f"echo not started: env X is {MAX_ARG_STRLEN + 2} bytes, over the kernel's {MAX_ARG_STRLEN - 1}-byte "
            "limit for one string",
        ),
        (
            Spec(type="exec", argv=["echo", "\udcff\ud800"]),
            "echo not started: argv[1] cannot be encoded (it holds a lone surrogate)",
        ),
    ],
)
async def test_values_the_playbook_names_fail_the_step_naming_them(spec: Spec, summary: str) -> None:
    out = await run(spec, ctx())
    assert (out.ok, out.status, out.exit_code, out.summary) == (False, "error", None, summary)


def test_env_suffix_sanitizes() -> None:
    assert env_suffix("my-label.x") == "MY_LABEL_X"
    assert env_suffix("a;b$(c)é") == "A_B__C__"


@pytest.mark.parametrize("bad", [{"PATH": "/tmp"}, {"A=B": "x"}, {"1A": "x"}, {"": "x"}])
def test_env_names_are_checked(bad: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        Spec(type="exec", argv=["true"], env=bad)


def test_argv_needs_a_program() -> None:
    with pytest.raises(ValueError):
        Spec(type="exec", argv=[])
    with pytest.raises(ValueError):
        Spec(type="exec", argv=[""])


async def test_program_looked_up_on_safe_path_and_cwd_used(tmp_path: Path) -> None:
    out = await run(Spec(type="exec", argv=["pwd"], cwd=str(tmp_path)), ctx())
    assert out.ok, out.summary
    assert out.output == f"{tmp_path}\n"


@pytest.mark.parametrize(
    "spec",
    [
        Spec(type="exec", argv=["/nonexistent/program"]),
        Spec(type="exec", argv=["no-such-program-anywhere"]),
        Spec(type="exec", argv=["pwd"], cwd="/nonexistent/dir"),
    ],
)
async def test_cannot_start_is_an_error(spec: Spec) -> None:
    out = await run(spec, ctx())
    assert (out.ok, out.status, out.exit_code) == (False, "error", None)
    assert out.summary.startswith("could not start")


async def test_timeout_term_is_enough_for_a_polite_program() -> None:
    started = time.monotonic()
    out = await run(Spec(type="exec", argv=["sleep", "30"], timeout=0.5), ctx())
    assert (out.ok, out.status) == (False, "timeout")
    assert out.data["killed_with"] == "SIGTERM"
    assert out.exit_code == -signal.SIGTERM
    assert time.monotonic() - started < 0.5 + TERM_GRACE_S
    assert dead(out.data["pid"])


# The child ignores SIGTERM and starts two grandchildren: one that also ignores it and one that
# does not. All three must be gone after the timeout.
STUBBORN = """
import os, signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
ignore = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
          " print('ignoring', flush=True); time.sleep(60)")
stubborn = subprocess.Popen([sys.executable, "-c", ignore], stdout=subprocess.PIPE)
assert stubborn.stdout.readline() == b"ignoring\\n"  # its handler is in place before any SIGTERM
kids = [stubborn, subprocess.Popen(["sleep", "60"])]
with open(sys.argv[1] + ".tmp", "w") as f:
    f.write(" ".join(str(p) for p in [os.getpid(), *(k.pid for k in kids)]) + "\\n")
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
print("ready", flush=True)
time.sleep(60)
"""


async def test_timeout_kills_the_whole_group_even_when_sigterm_is_ignored(tmp_path: Path) -> None:
    pids_file = tmp_path / "pids"
    spec = Spec(type="exec", argv=[PY, "-c", STUBBORN, str(pids_file)], timeout=3)
    started = time.monotonic()
    out = await run(spec, ctx())
    elapsed = time.monotonic() - started
    pids = [int(p) for p in wait_file(pids_file, timeout=0).split()]
    try:
        assert (out.ok, out.status) == (False, "timeout")
        assert out.data["killed_with"] == "SIGKILL"
        assert out.exit_code == -signal.SIGKILL
        assert out.output == "ready\n"
        assert 3 + TERM_GRACE_S <= elapsed < 3 + TERM_GRACE_S + 3
        assert wait_dead(pids) == []
    finally:
        for pid in pids:
            if not dead(pid):
                os.kill(pid, signal.SIGKILL)


async def test_cancelling_the_step_kills_the_group(tmp_path: Path) -> None:
    pids_file = tmp_path / "pids"
    task = asyncio.create_task(run(Spec(type="exec", argv=[PY, "-c", STUBBORN, str(pids_file)]), ctx()))
    pids = [int(p) for p in (await asyncio.to_thread(wait_file, pids_file)).split()]
    try:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert wait_dead(pids) == []
    finally:
        for pid in pids:
            if not dead(pid):
                os.kill(pid, signal.SIGKILL)


async def test_a_daemon_holding_the_output_does_not_block_the_step() -> None:
    # The program exits at once but leaves a background process with our pipe as its stdout.
    out = await run(Spec(type="exec", argv=["sh", "-c", "sleep 30 & echo $!"], timeout=20), ctx())
    daemon = int(out.output.split()[0])
    try:
        assert (out.ok, out.status) == (True, "ok")
        assert out.data["output_held_open"] is True
        assert out.duration_s < 10
        assert not dead(daemon)  # a normal exit leaves what the program started alone
    finally:
        os.kill(daemon, signal.SIGKILL)
