"""The HTML of the pages and of ``remediator report --format html``: the Jinja2 environment, what each
template shows, the verification chart, and the small helpers that format times, durations and links.

Server-side Jinja2 with autoescape on, in an Environment of its own: the sandboxed engine in
``service.playbooks.templating`` renders playbook parameters from alert labels, a different trust
boundary with different rules (strict undefined, no HTML). The pages need no JavaScript: filters are a
GET form and the approve/deny/acknowledge buttons are POST forms.

The detail page is built from :func:`service.reports.report.report_json`, the same model the JSON API
and the Markdown report use, so the formats cannot disagree. The handlers are in service/web/pages.py.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import jinja2

from service.reports.headline import failed_run
from service.reports.report import output_tail, report_json
from service.steps.promql import format_labels
from service.store import ACTIVE_STATES, ExecutionRecord

# The page stays readable with many series; the table below the chart still has every value.
MAX_SERIES = 6
CHART_WIDTH, CHART_HEIGHT, CHART_PAD = 320.0, 120.0, 6.0
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf")
# Action results travel in the redirect's query as fixed codes, never as free text: a crafted link
# cannot put words of its own on the page.
RESULTS = {
    "approve": "Approved: the execution continues.",
    "deny": "Denied: the approval step fails and the execution escalates.",
    "ack": "Acknowledged.",
    "unauthorized": "The operator token was not accepted.",
    "forbidden": "No operator token is configured on the service: approvals are disabled.",
    "conflict": "Nothing is pending for this execution (already decided, or timed out).",
    "unavailable": "This action is not available on this service.",
    "failed": "The action failed; see the service log.",
}
ACTIONS = ("approve", "deny", "ack")
MAINTENANCE_RESULTS = {
    "paused": "Paused: matching alerts are refused (reason paused) until it ends.",
    "resumed": "Resumed: automation acts again.",
    "reset": "Reset: the target's budget and cooldown start afresh.",
    "unauthorized": RESULTS["unauthorized"],
    "forbidden": "No operator token is configured on the service: maintenance changes are disabled.",
    "invalid": "Some field was empty or out of range; nothing changed.",
    "missing": "That pause is not active any more.",
}


def page_environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,  # a typo in a template is a 500 in tests, not a blank
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["number"] = show_number
    env.filters["moment"] = lambda value: show_time(value, precise=True)
    return env


def render_report_html(record: ExecutionRecord, alertmanager_url: str, runbook: str, now: datetime) -> str:
    """The detail page as a standalone file (``remediator report --format html``), without buttons."""
    context = detail_context(
        report_json(record),
        escalations=record.escalations,
        runbook=runbook,
        alertmanager_url=alertmanager_url,
        now=now,
        can_decide=False,
        can_ack=False,
        result=None,
    )
    return page_environment().get_template("detail.html").render(context)


# --- small pure helpers ----------------------------------------------------------------------------


def safe_link(url: str | None) -> str | None:
    """An http(s) URL from an alert, or None: autoescaping stops markup, not `javascript:` links."""
    if not url:
        return None
    try:
        scheme = urlsplit(url).scheme.lower()
    except ValueError:
        return None
    return url if scheme in ("http", "https") else None


def silence_url(alertmanager_url: str, labels: Mapping[str, str]) -> str:
    """Alertmanager's new-silence form, pre-filled with an exact matcher for every label."""
    matchers = ", ".join(f'{name}="{_matcher_value(value)}"' for name, value in sorted(labels.items()))
    query = urlencode({"filter": "{" + matchers + "}"}, quote_via=quote)
    return f"{alertmanager_url.rstrip('/')}/#/silences/new?{query}"


def _matcher_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    parsed = datetime.fromisoformat(value)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)  # the form says UTC


def show_time(value: str | datetime | None, precise: bool = False) -> str:
    """A time in UTC, date included (a saved page is read later, elsewhere); `precise`: to the millisecond."""
    parsed = parse_time(value) if isinstance(value, str) else value
    if parsed is None:
        return ""
    text = parsed.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f" if precise else "%Y-%m-%d %H:%M:%S")
    return (text[:-3] if precise else text) + "Z"


def show_number(value: float) -> str:
    return f"{value:g}"


def show_duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def age(value: str | None, now: datetime) -> str:
    parsed = parse_time(value)
    return "" if parsed is None else show_duration(max(0.0, (now - parsed).total_seconds())) + " ago"


def _seconds_between(start: str | None, end: str | None) -> float | None:
    begun, ended = parse_time(start), parse_time(end)
    return None if begun is None or ended is None else (ended - begun).total_seconds()


# --- the verification chart ----------------------------------------------------------------------


@dataclass(frozen=True)
class Series:
    name: str
    colour: str
    points: tuple[tuple[float, float, str, float], ...]  # x, y in the chart; when; the value

    @property
    def polyline(self) -> str:
        return " ".join(f"{x:.1f},{y:.1f}" for x, y, _, _ in self.points)


@dataclass(frozen=True)
class Chart:
    series: tuple[Series, ...]
    low: float
    high: float
    first: str
    last: str
    width: float = CHART_WIDTH
    height: float = CHART_HEIGHT


def numeric_samples(check: Mapping[str, Any]) -> list[tuple[str, float]]:
    """(series name, value) for each numeric sample a check carried (PromQL checks carry samples)."""
    found: list[tuple[str, float]] = []
    samples = check.get("data", {}).get("samples")
    if not isinstance(samples, list):
        return found
    for sample in samples:
        try:
            value = float(sample["value"])
        except (KeyError, TypeError, ValueError):
            continue
        if math.isfinite(value):
            found.append((f"{check.get('check', '')}{format_labels(sample.get('labels') or {})}", value))
    return found


def verification_chart(polls: Sequence[Mapping[str, Any]]) -> Chart | None:
    """A line per series over the polls' times, scaled into the chart; None when nothing is numeric."""
    values: dict[str, list[tuple[datetime, float]]] = {}
    for poll in polls:
        at = parse_time(poll["at"])
        assert at is not None
        for check in poll["data"].get("checks", []):
            for name, value in numeric_samples(check):
                values.setdefault(name, []).append((at, value))
    if not values:
        return None
    chosen = list(values.items())[:MAX_SERIES]
    times = [at for _, points in chosen for at, _ in points]
    numbers = [v for _, points in chosen for _, v in points]
    start, span = min(times), (max(times) - min(times)).total_seconds() or 1.0
    low, high = min(numbers), max(numbers)
    spread = (high - low) or 1.0
    inner_w, inner_h = CHART_WIDTH - 2 * CHART_PAD, CHART_HEIGHT - 2 * CHART_PAD

    def point(at: datetime, value: float) -> tuple[float, float, str, float]:
        x = CHART_PAD + inner_w * (at - start).total_seconds() / span
        y = CHART_PAD + inner_h * (1 - (value - low) / spread)
        return x, y, show_time(at), value

    series = tuple(
        Series(name, PALETTE[index % len(PALETTE)], tuple(point(at, v) for at, v in points))
        for index, (name, points) in enumerate(chosen)
    )
    return Chart(series, low, high, show_time(start), show_time(max(times)))


# --- the detail page model -------------------------------------------------------------------------


def detail_context(
    report: Mapping[str, Any],
    *,
    escalations: Sequence[Mapping[str, Any]],
    runbook: str,
    alertmanager_url: str,
    now: datetime,
    can_decide: bool,
    can_ack: bool,
    result: str | None,
    next_steps: Sequence[str] = (),
) -> dict[str, Any]:
    """What the detail template shows, from the report model (``report_json``). ``next_steps``: what
    approving the pending approval runs, in order."""
    execution, alert = report["execution"], report["alert"]
    events = report["timeline"]
    steps = []
    for step in report["steps"]:
        tail, cut = output_tail(step["output"])
        steps.append({**step, "tail": tail, "cut_lines": cut, "when": show_time(step["started_at"])})
    polls = [e for e in events if e["kind"] == "verify"]
    people = [
        {
            "when": show_time(e["at"]),
            "kind": e["kind"],
            "message": e["message"],
            "severity": e["data"].get("severity", ""),
            "by": "" if str(e["data"].get("by", "")) in e["message"] else e["data"]["by"],
        }
        for e in events
        if e["kind"] in ("escalation", "approval")
    ]
    failure = failed_run(execution, report["steps"])
    labels: Mapping[str, str] = alert["labels"] if alert else {}
    annotations: Mapping[str, str] = alert["annotations"] if alert else {}
    return {
        "execution": execution,
        "alert": alert,
        "labels": sorted(labels.items()),
        "annotations": sorted((k, v) for k, v in annotations.items() if k not in ("summary", "description")),
        "summary": annotations.get("summary", ""),
        "description": annotations.get("description", ""),
        "graph_url": safe_link(alert["generator_url"]) if alert else None,
        "runbook_url": safe_link(annotations.get("runbook_url")),
        "silence_url": silence_url(alertmanager_url, labels) if labels else None,
        "fired_since": show_time(alert["starts_at"]) if alert else "",
        "fired_age": age(alert["starts_at"], now) if alert else "",
        "why": failure.why(execution["reason"]) if failure is not None else execution["reason"],
        "progress": failure.progress if failure is not None else "",
        "generated": show_time(now),
        "took": show_duration(_seconds_between(execution["started_at"], execution["finished_at"])),
        "steps": steps,
        "polls": polls,
        "chart": verification_chart(polls),
        "people": people,
        "escalations": [
            {
                **e,
                "opened": show_time(e["opened_at"]),
                "closed": show_time(e["closed_at"]),
                "delivered": sum(1 for m in e["messages"] if m["delivered_at"]),
                "failing": sorted({m["last_error"] for m in e["messages"] if not m["delivered_at"]} - {""}),
            }
            for e in escalations
        ],
        "timeline": events,
        "runbook": runbook,
        "approval": _pending_approval(report["approvals"], now),
        "next_steps": list(next_steps),
        "active": execution["state"] in ACTIVE_STATES,
        "can_decide": can_decide,
        "can_ack": can_ack,
        "result": RESULTS.get(result or ""),
        "result_ok": result in ACTIONS,
    }


def _pending_approval(approvals: Sequence[Mapping[str, Any]], now: datetime) -> dict[str, str] | None:
    """The pending approval's deadline, in UTC and as the time left."""
    pending = next((a for a in approvals if a["decided_at"] is None), None)
    if pending is None:
        return None
    deadline = pending["deadline"] if isinstance(pending["deadline"], datetime) else parse_time(pending["deadline"])
    assert deadline is not None
    left = (deadline - now).total_seconds()
    remaining = f"{show_duration(left)} left" if left > 0 else f"passed {show_duration(-left)} ago"
    return {"step": str(pending["step"]), "deadline": show_time(deadline), "remaining": remaining}


# --- the index and maintenance page models ---------------------------------------------------------


def index_rows(rows: Sequence[Mapping[str, Any]], now: datetime) -> list[dict[str, Any]]:
    return [
        {
            **row,
            "created": show_time(row["created_at"]),
            "age": age(row["created_at"], now),
            "took": show_duration(_seconds_between(row["started_at"], row["finished_at"])),
        }
        for row in rows
    ]


def unmatched_rows(alerts: Sequence[Mapping[str, Any]], now: datetime) -> list[dict[str, Any]]:
    """The alerts no rule matched, as the index lists them: labels but the alertname, times in UTC."""
    return [
        {
            **alert,
            "other_labels": ", ".join(
                f'{name}="{value}"' for name, value in sorted(alert["labels"].items()) if name != "alertname"
            ),
            "first": show_time(alert["first_received_at"]),
            "last": show_time(alert["last_received_at"]),
            "age": age(alert["last_received_at"], now),
        }
        for alert in alerts
    ]


def maintenance_context(pauses: Sequence[Mapping[str, Any]], rules: list[str], result: str) -> dict[str, Any]:
    """What the maintenance template shows: the active pauses, the rules to pick from, an action's result."""
    return {
        "pauses": [
            {
                **pause,
                "since": show_time(pause["created_at"]),
                "until": show_time(pause["until"]) if pause["until"] else "",
            }
            for pause in pauses
        ],
        "rules": rules,
        "result": MAINTENANCE_RESULTS.get(result),
        "result_ok": result in ("paused", "resumed", "reset"),
    }
