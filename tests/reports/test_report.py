"""The Markdown report: the parts a paged engineer relies on, and output that tries to break it."""

from __future__ import annotations

from typing import Any

import pytest

from service.reports.report import OUTPUT_TAIL_LINES, render_markdown, report_json
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
        "data": {},
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
        "steps": [{**rec.steps[0], "stdout": None, "stderr": None}],
        "timeline": [],
        "escalations": [],
        "approvals": [],
    }


def exec_step(name: str, status: str, stdout: str = "", stderr: str = "", attempt: int = 1) -> dict[str, Any]:
    return {
        **step(stdout + stderr),
        "name": name,
        "attempt": attempt,
        "ok": status == "ok",
        "status": status,
        "data": {"exit_code": 0 if status == "ok" else 1, "stdout": stdout, "stderr": stderr},
    }


def failed_record() -> ExecutionRecord:
    steps = [
        exec_step("router_stop", "ok", stdout="stopped\n"),
        exec_step("router_start", "failed", stdout="starting\n", stderr="warming up\nERROR: port 9000 in use\n\n"),
        exec_step("router_start", "failed", stdout="starting\n", stderr="ERROR: port 9000 still in use\n", attempt=2),
    ]
    rec = record(steps, [])
    rec.execution.update(state="escalated", reason='step "router_start" failed: router_start.sh exited 1, expected 0')
    return rec


def test_json_keeps_stdout_and_stderr_apart_beside_the_merged_output() -> None:
    last = report_json(failed_record())["steps"][-1]
    assert (last["stdout"], last["stderr"]) == ("starting\n", "ERROR: port 9000 still in use\n")
    assert last["output"] == "starting\nERROR: port 9000 still in use\n"  # kept for compatibility
    assert last["data"] == {"exit_code": 1}  # the streams are fields of their own, not repeated in data


def test_a_failed_runs_headline_says_why_from_stderr_and_what_ran_before() -> None:
    text = render_markdown(failed_record(), "http://x/executions/ex-9")
    assert "**Its stderr ended:** `ERROR: port 9000 still in use`" in text
    assert "**What it did:** router\\_stop succeeded, router\\_start failed" in text
    succeeded = record([exec_step("router_stop", "ok")], [])
    succeeded.execution["state"] = "succeeded"
    assert "What it did" not in render_markdown(succeeded, "http://x")


def test_identical_consecutive_polls_collapse_into_one_row() -> None:
    def poll(n: int, summary: str, held: bool = False) -> dict[str, Any]:
        check = {"check": "alert", "ok": held, "summary": summary}
        at = f"2026-11-27T19:54:{n:02d}.000000+00:00"
        return {
            "at": at,
            "kind": "verify",
            "message": "",
            "data": {"poll": n, "phase": "verify", "held": held, "checks": [check]},
        }

    events = [poll(n, "firing") for n in range(1, 20)] + [poll(20, "resolved", held=True)]
    text = render_markdown(record([], events), "http://x")
    rows = [line for line in text.splitlines() if "| alert: " in line]
    assert rows == [
        "| 2026-11-27T19:54:01.000000+00:00 to 2026-11-27T19:54:19.000000+00:00 | verify | 1-19 (x19) | no"
        " | alert: FAILED (firing) |",
        "| 2026-11-27T19:54:20.000000+00:00 | verify | 20 | yes | alert: ok (resolved) |",
    ]


FORGED = "disk full\n## Verification\n[click](http://evil) <script>alert(1)</script> ![x](http://evil/i.png)"


def forged_record(generator_url: str) -> ExecutionRecord:
    rec = record([{**step("done"), "summary": "exit 0 <img src=x onerror=alert(1)>"}], [])
    rec.execution["target"] = "n1`](http://evil) <b>x</b>"
    rec.execution["alertname"] = "Nats\n# Owned"
    occurrence = {
        "alertname": "Nats\n# Owned",
        "status": "firing",
        "starts_at": AT,
        "receive_count": 1,
        "labels": {"job": "[job](http://evil)", "instance": "a|b\n## Verification"},
        "annotations": {"summary": FORGED},
        "generator_url": generator_url,
    }
    return ExecutionRecord(execution=rec.execution, steps=rec.steps, events=[], occurrence=occurrence)


def rendered_html(markdown: str) -> str:
    markdown_it = pytest.importorskip("markdown_it")  # CommonMark, as ticket systems render it (with tables)
    html: str = markdown_it.MarkdownIt("commonmark", {"html": True}).enable("table").render(markdown)
    return html


def test_alert_text_cannot_forge_sections_links_or_html() -> None:
    text = render_markdown(forged_record("http://prometheus:9090/graph?g0.expr=up&x=<b>\n## Verification"), "r")
    assert "- Summary: disk full ## Verification \\[click\\](http://evil) \\<script\\>alert(1)\\</script\\>" in text
    assert "- Target: ``n1`](http://evil) <b>x</b>``" in text  # one backtick inside: a fence of two
    assert "- Source: <http://prometheus:9090/graph?g0.expr=up&x=%3Cb%3E%0A##%20Verification>" in text
    html = rendered_html(text)
    # the report's own sections, each once; nothing from the alert became a heading, link, image or tag
    assert [line for line in html.splitlines() if line.startswith("<h")] == [
        "<h1>Nats # Owned on n1`](http://evil) &lt;b&gt;x&lt;/b&gt;: escalated</h1>",
        "<h2>What fired</h2>",
        "<h3>Labels</h3>",
        "<h3>Annotations</h3>",
        "<h3>Params</h3>",
        "<h2>Steps</h2>",
        "<h3>1. steps/start (<code>exec</code>): ok</h3>",
        "<h2>Verification</h2>",
        "<h2>Timeline</h2>",
        "<h2>Outcome</h2>",
    ]
    assert "<script" not in html and "<img" not in html and "<b>" not in html
    assert 'href="http://evil' not in html and "<a " in html  # the only link is the generatorURL
    assert html.count("<a ") == 1
    assert '<a href="http://prometheus:9090/graph?g0.expr=up&amp;x=%3Cb%3E%0A##%20Verification">' in html
    assert "<td>a|b ## Verification</td>" in html  # the pipe stayed inside its cell


@pytest.mark.parametrize("url", ["javascript:alert(1)", "data:text/html,<script>x</script>", "//evil/x", "http:evil"])
def test_only_http_urls_become_links(url: str) -> None:
    text = render_markdown(forged_record(url), "r")
    assert "(not linked: not an http(s) URL)" in text
    assert "<a " not in rendered_html(text)
