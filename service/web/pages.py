"""The HTML pages the paged engineer opens: the index of executions, one page per execution, and
maintenance (pauses and budget resets). Handlers only: what the pages show is built and rendered by
service/reports/html.py; what their buttons do is the API's own operation (operations.py), called
directly with the token from the form's password field (so it never appears in a URL).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode

import jinja2
from aiohttp import web
from multidict import MultiMapping

from service.reports.html import (
    detail_context,
    index_rows,
    maintenance_context,
    page_environment,
    show_duration,
    unmatched_rows,
)
from service.reports.report import report_json
from service.web import operations
from service.web.access import READ_CHALLENGE
from service.web.intake import TooLarge, Unreadable, read_bounded
from service.web.listing import EXECUTION_STATES, FILTERS, QueryError, form_values, parse_list_query
from service.web.openapi import FORM, INDEX_PAGE_SIZE
from service.web.runtime import RUNTIME, Runtime

PAGE_SIZE = 50
UNMATCHED_SHOWN = 20  # the most recent alerts no rule matched, under the executions
# The action forms are a token and a few short fields: bodies are capped far below the webhook's.
MAX_FORM_BYTES = 16 * 1024
MAX_FORM_FIELDS = 20
# A refused action's status, as the result code the redirect carries (the page words it: html.RESULTS).
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


@dataclass(frozen=True)
class Pages:
    env: jinja2.Environment


PAGES = web.AppKey("pages", Pages)


def add_page_routes(app: web.Application) -> None:
    app[PAGES] = Pages(page_environment())
    app.router.add_get("/", _index)
    app.router.add_get("/executions/{id}", _detail)
    app.router.add_post("/executions/{id}/{action:approve|deny|ack}", _action)
    app.router.add_get("/maintenance", _maintenance)
    app.router.add_post("/maintenance/pause", _pause)
    app.router.add_post("/maintenance/pauses/{id:[0-9]+}/resume", _resume)
    app.router.add_post("/maintenance/reset", _reset)


# --- the index query -------------------------------------------------------------------------------


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


# --- handlers --------------------------------------------------------------------------------------


def _reader(request: web.Request) -> None:
    """401 with a basic-auth challenge unless the request may read: a browser asks its user for the
    read token (as the password; any user name) and sends it with every later request."""
    if not operations.reader_accepted(request):
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
    unmatched = await runtime.store.unmatched_alerts(UNMATCHED_SHOWN)
    now = runtime.clock.now()
    return _html(
        request,
        "index.html",
        {
            "rows": index_rows(rows[: page.limit], now),
            "figures": figures,
            "unmatched": unmatched_rows(unmatched, now),
            "unmatched_shown": UNMATCHED_SHOWN,
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
    pending = next((a["step"] for a in report["approvals"] if a["decided_at"] is None), None)
    context = detail_context(
        report,
        escalations=escalations,
        runbook=_runbook(runtime, report["execution"]["playbook"]),
        alertmanager_url=runtime.settings.alertmanager_url,
        now=runtime.clock.now(),
        can_decide=runtime.executor.approvals.pending(execution_id),
        can_ack=any(e["state"] == "open" for e in escalations),
        result=request.query.get("result"),
        next_steps=[] if pending is None else _after(runtime, report["execution"], pending),
    )
    return _html(request, "detail.html", context)


def _runbook(runtime: Runtime, playbook: str) -> str:
    loaded = runtime.rules.current.playbooks.get(playbook) if runtime.rules.current else None
    return loaded.playbook.runbook if loaded else ""


def _after(runtime: Runtime, execution: Mapping[str, Any], approval_step: str) -> list[str]:
    """The playbook's steps after `approval_step`, "name (type)" in order, then its verification: what
    approving runs. Empty when the version loaded now is not the one running (a reload changed it)."""
    rules = runtime.rules.current
    loaded = rules.playbooks.get(execution["playbook"]) if rules else None
    if loaded is None or loaded.version != execution["playbook_version"]:
        return []
    steps = loaded.playbook.steps
    # named as the executor names them: an unnamed step is "steps-<n>-<type>"
    names = [step.name or f"steps-{index + 1}-{step.type}" for index, step in enumerate(steps)]
    if approval_step not in names:
        return []  # inside a rolling step: its own order applies
    start = names.index(approval_step) + 1
    after = [f"{name} ({step.type})" for name, step in zip(names[start:], steps[start:], strict=True)]
    return after + (["verification"] if loaded.playbook.verify is not None else [])


async def _action(request: web.Request) -> web.StreamResponse:
    """A button's form: the same operator check and the same operation as the JSON API's approve, deny
    and ack. Post/redirect/get: reloading the page does not repeat the action."""
    _reader(request)
    runtime = request.app[RUNTIME]
    execution_id, action = request.match_info["id"], request.match_info["action"]
    form = await _form(request)
    try:
        operations.check_operator(runtime, form.get("token"))
        who = operations.person_name(form.get("by"))
        if action == "ack":
            await operations.acknowledge(runtime, execution_id, who)
        else:
            await operations.decide(runtime, execution_id, action == "approve", who)
        result = action
    except operations.Refused as exc:
        result = _STATUS_RESULTS.get(exc.status, "failed")
    raise web.HTTPSeeOther(location=f"/executions/{quote(execution_id, safe='')}?result={result}")


# --- maintenance: pauses and budget resets ---------------------------------------------------------


async def _maintenance(request: web.Request) -> web.Response:
    _reader(request)
    runtime = request.app[RUNTIME]
    pauses = await runtime.store.active_pauses(runtime.clock.now())
    rules = [rule.name for rule in runtime.rules.current.rules] if runtime.rules.current else []
    return _html(request, "maintenance.html", maintenance_context(pauses, rules, request.query.get("result", "")))


def _done(result: str) -> web.HTTPSeeOther:
    return web.HTTPSeeOther(location=f"/maintenance?result={result}")


async def _operator_form(request: web.Request) -> tuple[Mapping[str, str], str]:
    """The form's fields and the person's name, once its operator token checks out."""
    _reader(request)
    form = await _form(request)
    try:
        operations.check_operator(request.app[RUNTIME], form.get("token", ""))
    except operations.Refused as exc:
        raise _done(_STATUS_RESULTS[exc.status]) from None
    return form, operations.person_name(form.get("by"))


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
    await operations.add_pause(request.app[RUNTIME], rule, target, reason, by, int(minutes) * 60 if minutes else None)
    raise _done("paused")


async def _resume(request: web.Request) -> web.StreamResponse:
    pause = operations.pause_id(request.match_info["id"])
    if pause is None:
        raise web.HTTPNotFound(text="no such pause\n")
    _fields, by = await _operator_form(request)
    raise _done("resumed" if await operations.clear_pause(request.app[RUNTIME], pause, by) else "missing")


async def _reset(request: web.Request) -> web.StreamResponse:
    form, by = await _operator_form(request)
    await operations.reset_limits(request.app[RUNTIME], _field(form, "rule", 200), _field(form, "target", 500), by)
    raise _done("reset")
