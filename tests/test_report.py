"""The Markdown report: the parts a paged engineer relies on, and output that tries to break it."""

from __future__ import annotations

from typing import Any

from service.report import OUTPUT_TAIL_LINES, render_markdown, report_json
from service.store import ExecutionRecord

AT = "2026-11-27T19:54:00.000000+00:00"


def record(steps: list[dict[str, Any]], events: list[dict[str, Any]]) -> ExecutionRecord:
    execution = {
        "id": "ex-9",
        "alertname": "NatsDown",
        "target": "n1:8222",
        "state": "escalated",
        "reason": "verification did not hold within 60s (3 polls): healthy: 503",
        "rule": "nats-down",
        "rule_version": "r",
        "playbook": "nats-restart",
        "playbook_version": "p",
        "mode": "enforce",
        "fingerprint": "f",
        "params": {"instance": "n1:8222"},
        "started_at": AT,
        "finished_at": AT,
    }
    return ExecutionRecord(execution=execution, steps=steps, events=events, occurrence=None)


def step(output: str) -> dict[str, Any]:
    return {
        "phase": "steps",
        "name": "start",
        "type": "exec",
        "attempt": 2,
        "started_at": AT,
        "duration_s": 1.5,
        "ok": True,
        "status": "ok",
        "summary": "exit 0",
        "output": output,
        "exit_code": 0,
    }


def test_output_cannot_close_the_fence_and_only_the_tail_is_shown() -> None:
    output = "".join(f"line {n}\n" for n in range(100)) + "```\n# not a heading\n"
    text = render_markdown(record([step(output)], []), "http://x/executions/ex-9")
    assert "````text\n[... last 30 lines ...]\nline 72\n" in text
    assert "line 71\n" not in text
    assert text.count("\n````\n") == 1
    assert OUTPUT_TAIL_LINES == 30
    assert "### 1. steps/start (`exec`): ok\n\n1.500s, attempt 2, exit code 0" in text


def test_verification_polls_and_timeline_are_tables_that_stay_tables() -> None:
    events = [
        {
            "at": AT,
            "kind": "verify",
            "message": "verify poll 1: healthy: 503",
            "data": {
                "poll": 1,
                "phase": "verify",
                "held": False,
                "checks": [{"check": "healthy", "ok": False, "summary": "status 503 | body\nerror"}],
            },
        },
        {"at": AT, "kind": "escalation", "message": "escalated:\na | b", "data": {}},
    ]
    text = render_markdown(record([], events), "http://x/executions/ex-9")
    assert "| " + AT + " | verify | 1 | no | healthy: FAILED (status 503 \\| body error) |" in text
    assert "| " + AT + " | escalation | escalated: a \\| b |" in text
    assert "No step ran." in text
    assert "(its stored occurrence is gone)" in text
    assert text.splitlines()[2] == (
        "**Outcome:** `escalated`: verification did not hold within 60s (3 polls): healthy: 503  "
    )


def test_json_is_the_api_shape() -> None:
    rec = record([step("x")], [])
    assert report_json(rec) == {
        "execution": rec.execution,
        "alert": None,
        "steps": rec.steps,
        "timeline": [],
        "escalations": [],
        "approvals": [],
    }
