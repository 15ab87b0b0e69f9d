"""The executor's control flow with real child processes: when, retries, allow_failure, earlier
results in later templates, rolling, approval, the playbook timeout and on_failure cleanup."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from support.fake_escalation import RecordingEscalation
from support.flow import poll

from service.clock import Clock, FakeClock, SystemClock
from service.flow.executor import Endpoints, Executor, RunRequest
from service.flow.modes import TargetLocks
from service.playbooks.loading import playbook_from_source
from service.playbooks.playbook import LoadedPlaybook
from service.playbooks.templating import TemplateEngine
from service.store import NewExecution, SQLiteStore

PY = sys.executable


class Rig:
    def __init__(self, store: SQLiteStore, clock: Clock | None = None) -> None:
        self.store = store
        self.engine = TemplateEngine()
        self.escalation = RecordingEscalation()
        self.escalations = self.escalation.escalations
        self.finished: list[tuple[str, str]] = []
        self.executor = Executor(
            store=store,
            clock=clock or SystemClock(),
            endpoints=Endpoints(
                "http://127.0.0.1:1", "http://127.0.0.1:1", "nats://127.0.0.1:1", "http://127.0.0.1:1", 4096
            ),
            engine=self.engine,
            escalation=self.escalation,
            max_concurrent=4,
            observer=self,
        )
        self.serial = 0

    async def run(
        self,
        playbook_yaml: str,
        params: dict[str, Any] | None = None,
        wait: bool = True,
        target: str = "t",
        labels: dict[str, str] | None = None,
        queued: bool = False,
    ) -> dict[str, Any]:
        self.serial += 1
        loaded: LoadedPlaybook = playbook_from_source(playbook_yaml.encode(), "test.yaml", self.engine)
        execution_id = f"ex-{self.serial}"
        await self.store.create_execution(
            NewExecution(
                execution_id,
                "rule",
                "v",
                loaded.name,
                loaded.version,
                target,
                None,
                "fp",
                "A",
                "enforce",
                params or {},
                "queued",
            ),
            SystemClock().now(),
        )
        task = self.executor.start(
            RunRequest(
                execution_id,
                "rule",
                loaded,
                params or {},
                target,
                0,
                "fp",
                labels or {"instance": "node-1"},
                {},
                "",
                "critical",
            ),
            queued,
        )
        if wait:
            await task
        return {"id": execution_id, "task": task}

    def execution_finished(self, rule: str, playbook: str, outcome: str, seconds: float) -> None:
        self.finished.append((rule, outcome))

    async def record(self, execution_id: str) -> Any:
        return await self.store.get_execution(execution_id)


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    store = SQLiteStore(tmp_path / "executor.db")
    await store.open()
    yield Rig(store)
    await store.close()


async def test_when_retries_allow_failure_and_earlier_results(rig: Rig, tmp_path: Path) -> None:
    counter = tmp_path / "attempts"
    playbook = f"""
name: flow
steps:
  - name: probe
    type: exec
    argv: ["{PY}", "-c", "print('pending=42')"]
  - name: skipped
    type: exec
    argv: ["{PY}", "-c", "raise SystemExit(9)"]
    when: "'pending=0' in steps.probe.output"
  - name: flaky
    type: exec
    argv: ["{PY}", "-c", "import pathlib,sys; p=pathlib.Path(sys.argv[1]); n=int(p.read_text()) if p.exists() else 0; p.write_text(str(n+1)); sys.exit(0 if n >= 2 else 1)", "{counter}"]
    retries: 3
    backoff: 0.01
  - name: tolerated
    type: exec
    argv: ["{PY}", "-c", "raise SystemExit(3)"]
    allow_failure: true
  - name: uses-earlier
    type: exec
    argv: ["{PY}", "-c", "import sys; print('saw', sys.argv[1])", "{{{{ steps.probe.output | trim }}}}"]
"""
    run = await rig.run(playbook)
    record = await rig.record(run["id"])
    assert record.execution["state"] == "succeeded"
    attempts = [(s["name"], s["attempt"], s["ok"]) for s in record.steps]
    assert attempts == [
        ("probe", 1, True),
        ("flaky", 1, False),
        ("flaky", 2, False),
        ("flaky", 3, True),
        ("tolerated", 1, False),
        ("uses-earlier", 1, True),
    ]
    assert record.steps[-1]["output"].strip() == "saw pending=42"
    assert any(e["kind"] == "skip" and "skipped" in e["message"] for e in record.events)


@pytest.mark.parametrize(("hour", "approval_asked"), [(12, False), (19, True)], ids=["business hours", "after hours"])
async def test_templates_get_what_the_docs_promise_and_time_in_reads_the_clock(
    tmp_path: Path, hour: int, approval_asked: bool
) -> None:
    # execution.started_at was documented and accepted by check, but missing when the run rendered it
    clock = FakeClock(datetime(2026, 12, 2, hour, 30, tzinfo=UTC))  # a Wednesday
    store = SQLiteStore(tmp_path / "executor.db")
    await store.open()
    try:
        rig = Rig(store, clock)
        playbook = f"""
name: times
steps:
  - name: approve
    type: approval
    prompt: "restart outside business hours?"
    timeout: 0.2
    allow_failure: true
    when: "not time_in(after='08:00', before='18:00', weekday='mon-fri', tz='UTC')"
  - name: show
    type: exec
    argv: ["{PY}", "-c", "import sys; print(*sys.argv[1:])", "{{{{ execution.started_at }}}}", "{{{{ now }}}}",
           "{{{{ now.hour }}}}", "{{{{ execution.id }}}}"]
"""
        record = await rig.record((await rig.run(playbook))["id"])
    finally:
        await store.close()
    assert record.execution["state"] == "succeeded"
    at = f"2026-12-02T{hour:02d}:30:00+00:00"
    assert record.steps[-1]["output"].split() == [at, at, str(hour), "ex-1"]
    assert [s["name"] for s in record.steps] == (["approve", "show"] if approval_asked else ["show"])


async def test_a_failing_step_stops_the_run_runs_cleanup_and_escalates(rig: Rig, tmp_path: Path) -> None:
    marker = tmp_path / "cleaned"
    playbook = f"""
name: failing
steps:
  - name: breaks
    type: exec
    argv: ["{PY}", "-c", "print('boom'); raise SystemExit(2)"]
  - name: never
    type: exec
    argv: ["{PY}", "-c", "print('should not run')"]
on_failure:
  escalate: true
  steps:
    - name: cleanup
      type: exec
      argv: ["{PY}", "-c", "import pathlib,sys; pathlib.Path(sys.argv[1]).write_text('x')", "{marker}"]
"""
    run = await rig.run(playbook)
    record = await rig.record(run["id"])
    assert record.execution["state"] == "escalated"
    assert 'step "breaks" failed' in record.execution["reason"]
    assert [s["name"] for s in record.steps] == ["breaks", "cleanup"]
    assert marker.exists()
    assert rig.escalations and rig.escalations[0][0] == run["id"]


async def test_rolling_goes_one_item_at_a_time_and_stops_at_the_first_failure(rig: Rig) -> None:
    playbook = f"""
name: rolling
params:
  nodes: {{type: str}}
steps:
  - name: restart-nodes
    type: rolling
    items: "{{{{ params.nodes }}}}"
    var: node
    steps:
      - name: restart
        type: exec
        argv: ["{PY}", "-c", "import sys; print('restart', sys.argv[1]); sys.exit(1 if sys.argv[1] == 'r3' else 0)", "{{{{ node }}}}"]
"""
    run = await rig.run(playbook, {"nodes": "r1, r2 r3,r4"})
    record = await rig.record(run["id"])
    assert record.execution["state"] == "escalated"
    outputs = [s["output"].strip() for s in record.steps if s["name"] == "restart"]
    assert outputs == ["restart r1", "restart r2", "restart r3"]  # r4 never touched
    rolling = next(s for s in record.steps if s["name"] == "restart-nodes")
    assert rolling["data"] == {"done": ["r1", "r2"], "failed": "r3"}


async def test_approval_approved_runs_the_guarded_step_and_denied_does_not(rig: Rig, tmp_path: Path) -> None:
    playbook = f"""
name: guarded
params:
  marker: {{type: str}}
steps:
  - name: ask
    type: approval
    prompt: "purge it?"
    timeout: 30
  - name: guarded
    type: exec
    argv: ["{PY}", "-c", "import pathlib,sys; pathlib.Path(sys.argv[1]).write_text('ran')", "{tmp_path}/{{{{ params.marker }}}}"]
"""
    for approved in (True, False):
        marker = f"m-{approved}"
        run = await rig.run(playbook, {"marker": marker}, wait=False)

        async def awaiting(execution_id: str = run["id"]) -> bool:
            record = await rig.record(execution_id)
            return bool(record.execution["state"] == "awaiting_approval")

        await poll(awaiting)
        assert rig.executor.approvals.decide(run["id"], approved, "alice")
        await run["task"]
        record = await rig.record(run["id"])
        assert (tmp_path / marker).exists() is approved
        assert record.execution["state"] == ("succeeded" if approved else "escalated")
        assert any(e["kind"] == "approval" and "by alice" in e["message"] for e in record.events)


async def test_approval_timeout_denies(rig: Rig) -> None:
    playbook = """
name: unattended
steps:
  - name: ask
    type: approval
    prompt: "anyone?"
    timeout: 0.2
"""
    run = await rig.run(playbook)
    record = await rig.record(run["id"])
    assert record.execution["state"] == "escalated"
    assert "denied by timeout after 0.2s" in record.execution["reason"]


async def test_playbook_timeout_stops_a_long_step(rig: Rig) -> None:
    playbook = f"""
name: slow
timeout: 0.5
steps:
  - name: forever
    type: exec
    argv: ["{PY}", "-c", "import time; time.sleep(30)"]
    timeout: 60
"""
    run = await rig.run(playbook)
    record = await rig.record(run["id"])
    assert record.execution["state"] == "escalated"
    assert "playbook timeout of 0.5s reached" in record.execution["reason"]
    [step] = record.steps
    assert (step["name"], step["status"]) == ("forever", "cancelled")


async def test_a_crash_inside_the_run_is_escalated_not_left_running(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    from service.store import StoreError

    async def broken(*_: object) -> None:
        raise StoreError("commit failed: disk I/O error")

    monkeypatch.setattr(rig.store, "record_step", broken)
    run = await rig.run(f"""
name: unlucky
steps:
  - name: fine
    type: exec
    argv: ["{PY}", "-c", "pass"]
""")
    record = await rig.record(run["id"])
    assert record.execution["state"] == "escalated"
    assert record.execution["reason"] == "internal error: StoreError: commit failed: disk I/O error"
    assert rig.escalations[-1][1] == record.execution["reason"]


async def test_target_locks_serialize_a_target_and_forget_it_once_nobody_holds_or_waits() -> None:
    locks = TargetLocks()
    entered: list[str] = []
    release = asyncio.Event()

    async def hold(name: str, target: str) -> None:
        async with locks.hold("rule", target):
            entered.append(name)
            if name == "first":
                await release.wait()

    first = asyncio.create_task(hold("first", "node-1"))
    second = asyncio.create_task(hold("second", "node-1"))
    abandoned = asyncio.create_task(hold("abandoned", "node-1"))
    other = asyncio.create_task(hold("other", "node-2"))
    await other

    async def first_in() -> bool:
        return entered == ["first", "other"] or entered == ["other", "first"]

    await poll(first_in)
    assert len(locks) == 1  # node-1 is held and waited for; node-2's lock went with its last user
    abandoned.cancel()  # cancelled while waiting: it must not keep the lock alive
    release.set()
    await asyncio.gather(first, second, return_exceptions=True)
    assert abandoned.cancelled()
    assert entered[-1] == "second" and "abandoned" not in entered
    assert len(locks) == 0


async def test_queued_runs_leave_no_lock_behind_for_targets_they_are_done_with(rig: Rig) -> None:
    playbook = f"""
name: quick
steps:
  - {{name: ok, type: exec, argv: ["{PY}", "-c", "pass"]}}
"""
    runs = [await rig.run(playbook, wait=False, target=f"node-{i}", queued=True) for i in range(20)]
    await asyncio.gather(*(run["task"] for run in runs))
    assert [(await rig.record(run["id"])).execution["state"] for run in runs] == ["succeeded"] * 20
    assert len(rig.executor._target_locks) == 0


async def test_a_nul_from_an_alert_templated_into_argv_fails_the_step_naming_the_element(rig: Rig) -> None:
    run = await rig.run(
        f"""
name: templated
steps:
  - name: echo_job
    type: exec
    argv: ["{PY}", "-c", "pass", "{{{{ labels.job }}}}"]
""",
        labels={"job": "nats\x00; rm -rf /"},
    )
    record = await rig.record(run["id"])
    assert record.execution["state"] == "escalated"
    step = record.steps[0]
    assert (step["status"], step["summary"]) == ("error", f"{PY} not started: argv[3] contains a NUL byte")
