"""docs/worked-example.md, as a new user follows it: the files it shows are the ones in
docs/examples/router-high-memory/, they pass `remediator check`, `remediator test` and promtool, and
they restart the real router on a real RouterHighMemory alert (approved when outside business hours)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from demo.processes import http_json, poll
from demo.stack import Stack, StackOptions
from e2e.stack import step, wait_firing

ROOT = Path(__file__).resolve().parent.parent.parent
DOC = ROOT / "docs" / "worked-example.md"
EXAMPLE = ROOT / "docs" / "examples" / "router-high-memory"
_BLOCK = re.compile(r"<!-- file: (?P<path>\S+) -->\n```[a-z]*\n(?P<text>.*?)```\n", re.DOTALL)
LEAK = 2 * 1024**3


def test_the_doc_shows_exactly_the_example_files() -> None:
    shown = {m["path"]: m["text"] for m in _BLOCK.finditer(DOC.read_text())}
    files = {str(p.relative_to(EXAMPLE)): p.read_text() for p in EXAMPLE.rglob("*") if p.is_file()}
    assert shown == files


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service.cli", *args], cwd=ROOT, capture_output=True, text=True, timeout=60
    )


def test_the_example_passes_check_rule_tests_and_promtool(tmp_path: Path) -> None:
    # A checkout with the example's files saved where the doc says, beside the shipped ones.
    for part in ("rules", "playbooks", "alertmanager"):
        shutil.copytree(ROOT / part, tmp_path / part, ignore=shutil.ignore_patterns("*.db"))
        shutil.copytree(EXAMPLE / part, tmp_path / part, dirs_exist_ok=True)
    shutil.copy(ROOT / "remediator.yaml", tmp_path / "remediator.yaml")
    config = str(tmp_path / "remediator.yaml")
    checked = _cli("check", "--config", config)
    assert (checked.returncode, checked.stderr) == (0, ""), checked.stdout
    assert checked.stdout.startswith("ok: ")
    tested = _cli("test", "--config", config, str(tmp_path / "rules" / "tests" / "router-memory.yaml"))
    assert tested.returncode == 0, tested.stdout
    assert tested.stdout.endswith("3 tests, all passed\n")
    promtool = shutil.which("promtool", path="/usr/bin:/usr/sbin:/bin")
    assert promtool, "promtool is not installed: apt-get install prometheus"
    promtest = subprocess.run(
        [promtool, "test", "rules", "router-memory-alerts.test.yml"],
        cwd=tmp_path / "alertmanager",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert promtest.returncode == 0, promtest.stdout + promtest.stderr


@pytest.mark.timeout(150)
def test_a_router_over_its_memory_limit_is_restarted_with_approval_outside_business_hours(stacks: Any) -> None:
    stack: Stack = stacks(StackOptions(extra_dirs=(EXAMPLE,)))
    router_before = stack.pids()["router"]
    stack.router_admin("POST", "faults/memory", {"leaked_bytes": LEAK})
    wait_firing(stack, ["RouterHighMemory"], instance=stack.router_instance)
    run = stack.wait_execution(
        "the router-high-memory run to start",
        60,
        lambda r: r["state"] in ("running", "verifying", "awaiting_approval", "succeeded"),
        terminal=False,
        rule="router-high-memory",
    )
    started = datetime.fromisoformat(_started_at(stack, run["id"]))
    business_hours = 8 <= started.hour < 18
    if not business_hours:
        poll(
            lambda: stack.execution(run["id"])["execution"]["state"] == "awaiting_approval",
            60,
            "the run to wait for approval",
            every=0.2,
        )
        token = stack.operator_token_file.read_text().strip()
        status, _ = http_json(
            "POST",
            f"{stack.remediator_url}/api/v1/executions/{run['id']}/approve?by=e2e",
            {},
            {"Authorization": f"Bearer {token}"},
        )
        assert status == 200
    done = stack.wait_execution("the run to finish", 90, lambda r: r["id"] == run["id"], rule="router-high-memory")
    report = stack.execution(run["id"])
    assert done["state"] == "succeeded", report
    names = [s["name"] for s in report["steps"] if s["phase"] == "steps"]
    approval = [] if business_hours else ["approve"]  # skipped (when: is false) inside business hours
    assert names == ["memory_before", *approval, "router_stop", "router_start"]
    assert step(report, "memory_before")["ok"]
    assert "Started router" in step(report, "router_start")["output"]
    assert stack.pids()["router"] not in (None, router_before)  # a new process ...
    assert stack.router_metrics()["router_memory_bytes"] < 1e9  # ... without the leak


def _started_at(stack: Stack, execution_id: str) -> str:
    def started() -> str | None:
        value: str | None = stack.execution(execution_id)["execution"]["started_at"]
        return value

    return poll(started, 30, "the run's start time", every=0.1)
