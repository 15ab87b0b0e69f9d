"""The HTML pages the paged engineer opens: the index of executions and one page per execution.

Server-side Jinja2 with autoescape on, in an Environment of its own: the sandboxed engine in
``service.playbooks.templating`` renders playbook parameters from alert labels, a different trust boundary with
different rules (strict undefined, no HTML). The pages need no JavaScript: filters are a GET form and
the approve/deny/acknowledge buttons are POST forms.

The detail page is built from :func:`service.reports.report.report_json`, the same model the JSON API and the
Markdown report use, so the formats cannot disagree.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

import jinja2
from aiohttp import web
from multidict import CIMultiDict, MultiMapping

from service.reports.report import OUTPUT_TAIL_CHARS, OUTPUT_TAIL_LINES, report_json
from service.steps.promql import format_labels
from service.store import ACTIVE_STATES, ExecutionRecord
from service.web.access import READ_CHALLENGE
from service.web.app import (
    RUNTIME,
    Runtime,
    add_pause,
    clear_pause,
    operator_token_accepted,
    pause_id,
    reader_accepted,
    reset_limits,
)
from service.web.intake import TooLarge, Unreadable, read_bounded
from service.web.listing import EXECUTION_STATES, FILTERS, QueryError, form_values, parse_list_query
from service.web.openapi import FORM, INDEX_PAGE_SIZE

PAGE_SIZE = 50
# The action forms are a token and a few short fields: bodies are capped far below the webhook's.
MAX_FORM_BYTES = 16 * 1024
MAX_FORM_FIELDS = 20
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
_STATUS_RESULTS = {401: "unauthorized", 403: "forbidden", 409: "conflict", 404: "unavailable"}
# No script runs on these pages at all; inline CSS and the inline SVG chart are all they need.
_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Pages:
    env: jinja2.Environment


PAGES = web.AppKey("pages", Pages)


def page_environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).parent.parent / "reports" / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,  # a typo in a template is a 500 in tests, not a blank
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["number"] = show_number
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


def add_page_routes(app: web.Application) -> None:
    app[PAGES] = Pages(page_environment())
    app.router.add_get("/", _index)
    app.router.add_get("/executions/{id}", _detail)
    app.router.add_post("/executions/{id}/{action:approve|deny|ack}", _action)
    app.router.add_get("/maintenance", _maintenance)
    app.router.add_post("/maintenance/pause", _pause)
    app.router.add_post("/maintenance/pauses/{id:[0-9]+}/resume", _resume)
    app.router.add_post("/maintenance/reset", _reset)


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


def output_tail(output: str) -> tuple[str, int]:
    """The last lines of a step's output (where the error nearly always is) and how many were cut."""
    lines = output.rstrip("\n").splitlines()
    kept = lines[-OUTPUT_TAIL_LINES:]
    text = "\n".join(kept)[-OUTPUT_TAIL_CHARS:]
    return text, len(lines) - len(kept)


def parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    parsed = datetime.fromisoformat(value)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)  # the form says UTC


def show_time(value: str | datetime | None) -> str:
    parsed = parse_time(value) if isinstance(value, str) else value
    return "" if parsed is None else parsed.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")


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
) -> dict[str, Any]:
    """What the detail template shows, from the report model (``report_json``)."""
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
        "active": execution["state"] in ACTIVE_STATES,
        "can_decide": can_decide,
        "can_ack": can_ack,
        "result": RESULTS.get(result or ""),
        "result_ok": result in ACTIONS,
    }


# --- the index page model --------------------------------------------------------------------------


@dataclass(frozen=True)
class IndexQuery:
    limit: int
    offset: int
    filters: dict[str, str]  # what the store filters on (times normalised to the stored form)
    form: dict[str, str]  # what the form shows back, as typed

    def link(self, offset: int) -> str:
        query = {**{k: v for k, v in self.form.items() if v}, "limit": str(self.limit), "offset": str(offset)}
        return "/?" + urlencode(query)


def index_query(query: MultiMapping[str]) -> IndexQuery:
    """The index's query string, validated as the API validates it (empty fields mean "any"); 400 names
    the bad parameter."""
    try:
        parsed = parse_list_query(query, max_limit=INDEX_PAGE_SIZE, default_limit=PAGE_SIZE, form=True)
    except QueryError as exc:
        raise web.HTTPBadRequest(text=str(exc)) from None
    return IndexQuery(parsed.limit, parsed.offset, parsed.filters, form_values(query, FILTERS))


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


# --- handlers --------------------------------------------------------------------------------------


def _reader(request: web.Request) -> None:
    """401 with a basic-auth challenge unless the request may read: a browser asks its user for the
    read token (as the password; any user name) and sends it with every later request."""
    if not reader_accepted(request):
        raise web.HTTPUnauthorized(text="a read token is required\n", headers={"WWW-Authenticate": READ_CHALLENGE})


async def _form(request: web.Request) -> dict[str, str]:
    """An urlencoded form body, bounded and strictly UTF-8; 4xx for anything else. Read only after the
    reader check, and the body is small: the operator token inside it is checked by the caller."""
    if request.content_type != FORM:
        raise web.HTTPUnsupportedMediaType(text=f"expected a form ({FORM}), got {request.content_type!r}\n")
    try:
        body = (await read_bounded(request, MAX_FORM_BYTES)).decode("utf-8")
        pairs = parse_qsl(body, keep_blank_values=True, max_num_fields=MAX_FORM_FIELDS, errors="strict")
    except TooLarge:
        raise web.HTTPRequestEntityTooLarge(MAX_FORM_BYTES, request.content_length or MAX_FORM_BYTES + 1) from None
    except (Unreadable, UnicodeDecodeError, ValueError) as exc:
        raise web.HTTPBadRequest(text=f"not a readable form: {exc}\n") from None
    return dict(pairs)


def _html(request: web.Request, template: str, context: Mapping[str, Any], status: int = 200) -> web.Response:
    body = request.app[PAGES].env.get_template(template).render(context)
    return web.Response(text=body, status=status, content_type="text/html", headers=_HEADERS)


async def _index(request: web.Request) -> web.Response:
    _reader(request)
    runtime = request.app[RUNTIME]
    page = index_query(request.query)
    # One row more than shown tells whether an older page exists without counting the whole table.
    rows = await runtime.store.list_executions(page.limit + 1, page.offset, page.filters)
    figures = await runtime.store.rule_figures()
    now = runtime.clock.now()
    return _html(
        request,
        "index.html",
        {
            "rows": index_rows(rows[: page.limit], now),
            "figures": figures,
            "form": page.form,
            "states": EXECUTION_STATES,
            "rules": [rule.name for rule in runtime.rules.current.rules] if runtime.rules.current else [],
            "newer": page.link(max(0, page.offset - page.limit)) if page.offset > 0 else None,
            "older": page.link(page.offset + page.limit) if len(rows) > page.limit else None,
            "first": page.offset + 1,
            "limit": page.limit,
            "show_duration": show_duration,
        },
    )


async def _detail(request: web.Request) -> web.Response:
    _reader(request)
    runtime = request.app[RUNTIME]
    execution_id = request.match_info["id"]
    record = await runtime.store.get_execution(execution_id)
    if record is None:
        return _html(request, "missing.html", {"execution_id": execution_id}, status=404)
    report = report_json(record)
    escalations = await runtime.store.escalations_for(execution_id)
    context = detail_context(
        report,
        escalations=escalations,
        runbook=_runbook(runtime, report["execution"]["playbook"]),
        alertmanager_url=runtime.settings.alertmanager_url,
        now=runtime.clock.now(),
        can_decide=runtime.executor.approvals.pending(execution_id),
        can_ack=_api_handler(request.app, "ack") is not None and any(e["state"] == "open" for e in escalations),
        result=request.query.get("result"),
    )
    return _html(request, "detail.html", context)


def _runbook(runtime: Runtime, playbook: str) -> str:
    loaded = runtime.rules.current.playbooks.get(playbook) if runtime.rules.current else None
    return loaded.playbook.runbook if loaded else ""


def _api_handler(app: web.Application, action: str) -> Handler | None:
    """The JSON API's POST handler for an execution action, if this service has that action."""
    wanted = f"/api/v1/executions/{{id}}/{action}"
    for resource in app.router.resources():
        if resource.canonical == wanted:
            for route in resource:
                if route.method == "POST":
                    return route.handler
    return None


async def _action(request: web.Request) -> web.StreamResponse:
    """A button's form: the token from a password field becomes the Bearer header of the JSON API's own
    handler, called in process, so the page and the API share one check and one decision (and the
    token never appears in a URL). Post/redirect/get: reloading the page does not repeat the action.
    """
    _reader(request)
    execution_id, action = request.match_info["id"], request.match_info["action"]
    form = await _form(request)
    token, by = form.get("token"), form.get("by")
    handler = _api_handler(request.app, action)
    if handler is None:
        result = "unavailable"
    else:
        query = {"by": " ".join(by.split())[:100]} if isinstance(by, str) and by.strip() else {}
        api_request = request.clone(
            rel_url=f"/api/v1/executions/{quote(execution_id, safe='')}/{action}?{urlencode(query)}",
            headers=CIMultiDict({"Authorization": f"Bearer {token if isinstance(token, str) else ''}"}),
        )
        # The clone keeps this route's match info, whose "id" is the API route's "id" as well.
        try:
            status = (await handler(api_request)).status
        except web.HTTPException as exc:
            status = exc.status
        result = action if status < 300 else _STATUS_RESULTS.get(status, "failed")
    raise web.HTTPSeeOther(location=f"/executions/{quote(execution_id, safe='')}?result={result}")


# --- maintenance: pauses and budget resets ---------------------------------------------------------


async def _maintenance(request: web.Request) -> web.Response:
    _reader(request)
    runtime = request.app[RUNTIME]
    result = request.query.get("result", "")
    pauses = [
        {**pause, "since": show_time(pause["created_at"]), "until": show_time(pause["until"]) if pause["until"] else ""}
        for pause in await runtime.store.active_pauses(runtime.clock.now())
    ]
    return _html(
        request,
        "maintenance.html",
        {
            "pauses": pauses,
            "rules": [rule.name for rule in runtime.rules.current.rules] if runtime.rules.current else [],
            "result": MAINTENANCE_RESULTS.get(result),
            "result_ok": result in ("paused", "resumed", "reset"),
        },
    )


def _done(result: str) -> web.HTTPSeeOther:
    return web.HTTPSeeOther(location=f"/maintenance?result={result}")


async def _operator_form(request: web.Request) -> tuple[Mapping[str, str], str]:
    """The form's fields and the person's name, once its operator token checks out."""
    _reader(request)
    form = await _form(request)
    accepted = operator_token_accepted(request.app[RUNTIME], form.get("token", ""))
    if accepted is None:
        raise _done("forbidden")
    if not accepted:
        raise _done("unauthorized")
    return form, " ".join(form.get("by", "").split())[:100] or "operator"


def _field(form: Mapping[str, str], name: str, limit: int = 1000) -> str:
    value = form.get(name, "").strip()
    if not value or len(value) > limit:
        raise _done("invalid")
    return value


async def _pause(request: web.Request) -> web.StreamResponse:
    form, by = await _operator_form(request)
    rule, target, reason = _field(form, "rule", 200), _field(form, "target", 500), _field(form, "reason")
    minutes = form.get("minutes", "").strip()
    if minutes and not (minutes.isdigit() and 1 <= int(minutes) <= 30 * 24 * 60):
        raise _done("invalid")
    await add_pause(request.app[RUNTIME], rule, target, reason, by, int(minutes) * 60 if minutes else None)
    raise _done("paused")


async def _resume(request: web.Request) -> web.StreamResponse:
    pause = pause_id(request.match_info["id"])
    if pause is None:
        raise web.HTTPNotFound(text="no such pause\n")
    _fields, by = await _operator_form(request)
    raise _done("resumed" if await clear_pause(request.app[RUNTIME], pause, by) else "missing")


async def _reset(request: web.Request) -> web.StreamResponse:
    form, by = await _operator_form(request)
    await reset_limits(request.app[RUNTIME], _field(form, "rule", 200), _field(form, "target", 500), by)
    raise _done("reset")
