"""The execution report: one model (the stored record) rendered as JSON or Markdown (HTML: html.py).

The Markdown is what a paged engineer reads: the outcome first, then what fired, what ran (each
step with its output's tail), what verification measured, and the timeline. Every format is built
from :class:`service.store.ExecutionRecord` so they cannot disagree.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote, urlsplit

from service.reports.headline import failed_run
from service.store import ExecutionRecord

# The tail is what the page needs (the error is nearly always at the end); the JSON has it all.
OUTPUT_TAIL_LINES = 30
OUTPUT_TAIL_CHARS = 4000
_BACKTICKS = re.compile(r"`+")
# What could start a link, an image, emphasis, code, an HTML tag or an entity, or end a table cell;
# CommonMark lets a backslash escape any ASCII punctuation. `(` `#` `+` `-` only matter after `]` or
# at the start of a line, and escaped text never starts one.
_MARKUP = re.compile(r"([\\`*_\[\]<>&|~])")
# Kept as they are when a URL is quoted for a link; the rest (space, `<`, `>`, `\`, quotes, non-ASCII)
# is percent-encoded, so the link cannot end early or carry markup.
_URL_SAFE = "/:?#[]@!$&'()*+,;=%~-._"


def report_json(record: ExecutionRecord) -> dict[str, Any]:
    """The JSON report (``GET /api/v1/executions/{id}`` and ``remediator report --format json``)."""
    return {
        "execution": record.execution,
        "alert": record.occurrence,
        "steps": report_steps(record.steps),
        "timeline": record.events,
        "escalations": record.escalations,
        "approvals": record.approvals,
    }


def report_steps(steps: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The steps as the report shows them: `output` as the program's streams interleaved, and a
    process's `stdout` and `stderr` each on its own (null for a step that is no process, and for runs
    recorded before the streams were kept apart). The step keeps them in its data."""
    shown = []
    for step in steps:
        data = dict(step["data"])
        streams = {name: data.pop(name) if isinstance(data.get(name), str) else None for name in ("stdout", "stderr")}
        shown.append({**step, **streams, "data": data})
    return shown


def render_markdown(record: ExecutionRecord, report_url: str) -> str:
    """A readable Markdown report of one execution."""
    execution = record.execution
    failure = failed_run(execution, report_steps(record.steps))
    lines = [
        f"# {_text(execution['alertname'])} on {_text(execution['target'])}: {execution['state']}",
        "",
        f"**Outcome:** {_outcome(execution)}  ",
    ]
    if failure is not None:
        if failure.stderr_line:
            lines.append(f"**Its stderr ended:** {_code(failure.stderr_line)}  ")
        lines.append(f"**What it did:** {_text(failure.progress)}  ")
    lines += [f"**Report:** {report_url}", ""]
    lines += _what_fired(record)
    lines += _steps(record.steps)
    lines += _verification(record.events)
    lines += _people(record)
    lines += _timeline(record.events)
    lines += [
        "## Outcome",
        "",
        f"- State: `{execution['state']}`",
        f"- Reason: {_text(execution['reason']) or '(none recorded)'}",
        f"- Started: {execution['started_at'] or 'never'}; finished: {execution['finished_at'] or 'not yet'}",
        "",
    ]
    return "\n".join(lines)


def _outcome(execution: Mapping[str, Any]) -> str:
    reason = _text(execution["reason"])
    return f"`{execution['state']}`" + (f": {reason}" if reason else "")


def _what_fired(record: ExecutionRecord) -> list[str]:
    execution, occurrence = record.execution, record.occurrence
    lines = ["## What fired", ""]
    if occurrence is not None:
        started = f"started {occurrence['starts_at']}, received {occurrence['receive_count']} time(s)"
        lines.append(f"- Alert {_code(occurrence['alertname'])} ({occurrence['status']}), {started}")
        summary = occurrence["annotations"].get("summary") or occurrence["annotations"].get("description")
        if summary:
            lines.append(f"- Summary: {_text(summary)}")
        if occurrence["generator_url"]:
            lines.append(f"- Source: {_link(occurrence['generator_url'])}")
    else:
        lines.append(f"- Alert {_code(execution['alertname'])} (its stored occurrence is gone)")
    lines += [
        f"- Fingerprint: {_code(execution['fingerprint'])}",
        f"- Rule: {_code(execution['rule'])} (version {_code(execution['rule_version'])})",
        f"- Playbook: {_code(execution['playbook'])} (version {_code(execution['playbook_version'])})",
        f"- Mode: {_code(execution['mode'])}",
        f"- Target: {_code(execution['target'])}",
        "",
    ]
    if occurrence is not None:
        lines += _table("Labels", ("label", "value"), sorted(occurrence["labels"].items()))
        lines += _table("Annotations", ("annotation", "value"), sorted(occurrence["annotations"].items()))
    lines += _table("Params", ("param", "value"), sorted(execution["params"].items()))
    return lines


def _steps(steps: list[dict[str, Any]]) -> list[str]:
    lines = ["## Steps", ""]
    if not steps:
        return [*lines, "No step ran.", ""]
    for number, step in enumerate(steps, start=1):
        attempt = f", attempt {step['attempt']}" if step["attempt"] > 1 else ""
        exit_code = f", exit code {step['exit_code']}" if step["exit_code"] is not None else ""
        lines += [
            f"### {number}. {step['phase']}/{_text(step['name'])} ({_code(step['type'])}): {step['status']}",
            "",
            f"{step['duration_s']:.3f}s{attempt}{exit_code}, started {step['started_at']}",
            "",
        ]
        if step["summary"]:
            lines += [_text(step["summary"]), ""]
        if step["output"]:
            lines += [*_fenced(_tail(step["output"])), ""]
    return lines


def _verification(events: list[dict[str, Any]]) -> list[str]:
    """A row per poll, identical consecutive ones as one ("3-21 (x19)"): a long wait reads as one line."""
    polls = [e for e in events if e["kind"] == "verify"]
    lines = ["## Verification", ""]
    if not polls:
        return [*lines, "No verification poll ran.", ""]
    runs: list[tuple[tuple[str, str, str], list[dict[str, Any]]]] = []
    for event in polls:
        data = event["data"]
        checks = "; ".join(
            f"{c['check']}: {'ok' if c['ok'] else 'FAILED'} ({c['summary']})" for c in data.get("checks", [])
        )
        said = (str(data.get("phase", "")), "yes" if data.get("held") else "no", checks)
        if runs and runs[-1][0] == said:
            runs[-1][1].append(event)
        else:
            runs.append((said, [event]))
    rows = []
    for (phase, held, checks), run in runs:
        first, last = run[0], run[-1]
        at = first["at"] if len(run) == 1 else f"{first['at']} to {last['at']}"
        poll = str(first["data"].get("poll", ""))
        if len(run) > 1:
            poll += f"-{last['data'].get('poll', '')} (x{len(run)})"
        rows.append((at, phase, poll, held, checks))
    return lines + _rows(("at", "phase", "poll", "held", "checks"), rows) + [""]


def _timeline(events: list[dict[str, Any]]) -> list[str]:
    lines = ["## Timeline", ""]
    if not events:
        return [*lines, "Nothing recorded.", ""]
    return lines + _rows(("at", "kind", "message"), ((e["at"], e["kind"], e["message"]) for e in events)) + [""]


def _table(title: str, header: tuple[str, str], items: list[tuple[str, Any]]) -> list[str]:
    if not items:
        return []
    return [f"### {title}", "", *_rows(header, ((k, str(v)) for k, v in items)), ""]


def _rows(header: tuple[str, ...], rows: Iterable[tuple[str, ...]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(_cell(value) for value in row) + " |" for row in rows]
    return out


def _cell(value: str) -> str:
    # A pipe or a newline would end the cell or the row early; _text escapes the one, joins the other.
    return _text(value)


def _text(value: str) -> str:
    """Untrusted text as inline Markdown that renders as itself: one line, markup escaped."""
    return _MARKUP.sub(r"\\\1", " ".join(value.split()))


def _code(value: str) -> str:
    """Untrusted text as a code span on one line; its fence is longer than any backtick run inside."""
    text = " ".join(value.split())
    if not text:
        return "(none)"
    fence = "`" * (max((len(run) for run in _BACKTICKS.findall(text)), default=0) + 1)
    padding = " " if text.startswith("`") or text.endswith("`") else ""  # one space each side is stripped
    return f"{fence}{padding}{text}{padding}{fence}"


def _link(url: str) -> str:
    """An http(s) URL as an autolink, percent-encoded so it cannot end early; anything else as text."""
    parts = urlsplit(url.strip())
    if parts.scheme.lower() in ("http", "https") and parts.netloc:
        return f"<{quote(url.strip(), safe=_URL_SAFE)}>"
    return f"{_code(url)} (not linked: not an http(s) URL)"


def output_tail(output: str) -> tuple[str, int]:
    """The last lines of a step's output (where the error nearly always is) and how many were cut."""
    lines = output.rstrip("\n").splitlines()
    kept = lines[-OUTPUT_TAIL_LINES:]
    text = "\n".join(kept)[-OUTPUT_TAIL_CHARS:]
    return text, len(lines) - len(kept)


def _tail(output: str) -> str:
    tail, _cut = output_tail(output)
    if len(tail) < len(output.rstrip("\n")):
        return f"[... last {len(tail.splitlines())} lines ...]\n{tail}"
    return tail


def _fenced(text: str) -> list[str]:
    # The fence must be longer than any run of backticks in the output, or the output could close it.
    longest = max((len(run) for run in _BACKTICKS.findall(text)), default=0)
    fence = "`" * max(3, longest + 1)
    return [f"{fence}text", text, fence]


def _people(record: ExecutionRecord) -> list[str]:
    """Escalations (who was told, when, whether it was acknowledged) and approvals (who decided)."""
    if not record.escalations and not record.approvals:
        return []
    lines = ["## Escalations and approvals", ""]
    for escalation in record.escalations:
        delivered = sum(1 for m in escalation["messages"] if m["delivered_at"])
        who = f", acknowledged by {_text(escalation['acked_by'])}" if escalation["acked_by"] else ""
        lines.append(
            f"- {escalation['opened_at']} escalation ({escalation['severity']}, {escalation['state']}{who}): "
            f"{_text(escalation['reason'])} — {delivered} of {len(escalation['messages'])} messages delivered"
        )
    for approval in record.approvals:
        decided = (
            f"{approval['decision']} by {_text(approval['approver'])} at {approval['decided_at']}"
            if approval["decided_at"]
            else f"pending until {approval['deadline']}"
        )
        lines.append(f"- approval for step {_code(approval['step'])} ({_text(approval['prompt'])}): {decided}")
    return [*lines, ""]
