"""The JSON API and the service's own endpoints: each handler reads the request, calls the store or an
operation (operations.py, shared with the pages), and answers through the model the OpenAPI document
describes (api_models.py, openapi.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import TypeVar

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ValidationError

from service.alerts.webhook import describe_errors, parse
from service.flow.dispatcher import Dispatcher
from service.reports.report import report_json
from service.rules.explain import explain_alert, notification_alerts
from service.rules.ruleset import RuleSet
from service.web.access import OPERATOR_CHALLENGE, READ_CHALLENGE, authorization
from service.web.api_models import (
    ErrorAnswer,
    ErrorDetail,
    ExecutionList,
    ExecutionReport,
    LimitsReset,
    Pause,
    Paused,
    PauseList,
    PauseRequest,
    ReloadDone,
    ReloadFailed,
    ResetRequest,
    Resumed,
    SilencePause,
    SimulatedAlert,
)
from service.web.intake import TooLarge, Unreadable, handle, json_content_problem, read_bounded
from service.web.listing import QueryError, parse_list_query
from service.web.openapi import API_PAGE_SIZE
from service.web.operations import (
    Refused,
    acknowledge,
    add_pause,
    check_operator,
    clear_pause,
    decide,
    pause_id,
    person_name,
    reader_accepted,
    reset_limits,
)
from service.web.runtime import INTAKE, OPENAPI, RUNTIME, SIMULATIONS

ApiModel = TypeVar("ApiModel", bound=BaseModel)

# Simulate explains at most this many alerts per request (each against every rule), one request at a time.
MAX_SIMULATE_ALERTS = 1000
SIMULATE_SLICE_S = 0.005  # the longest a simulation holds the loop between two yields
# Pause and reset bodies are a few fields; the webhook's 1 MiB would only be room to waste.
MAX_OPERATOR_BODY_BYTES = 16 * 1024


def add_api_routes(app: web.Application) -> None:
    app.router.add_post("/hooks/alertmanager", _receive_webhook)
    app.router.add_get("/-/healthy", _healthy)
    app.router.add_get("/-/ready", _ready)
    app.router.add_post("/-/reload", _reload)
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/api/v1/openapi.json", _openapi)
    app.router.add_post("/api/v1/simulate", _simulate)
    app.router.add_get("/api/v1/executions", _list_executions)
    app.router.add_get("/api/v1/executions/{id}", _get_execution)
    app.router.add_post("/api/v1/executions/{id}/approve", _approve)
    app.router.add_post("/api/v1/executions/{id}/deny", _deny)
    app.router.add_post("/api/v1/executions/{id}/ack", _ack)
    app.router.add_get("/api/v1/pauses", _list_pauses)
    app.router.add_post("/api/v1/pauses", _add_pause)
    app.router.add_delete("/api/v1/pauses/{id}", _clear_pause)
    app.router.add_post("/api/v1/limits/reset", _reset_limits)


async def _receive_webhook(request: web.Request) -> web.Response:
    intake = request.app[INTAKE]
    response = await handle(intake, request)
    intake.metrics.webhook.count_request(response.status)
    return response


# --- answers and refusals --------------------------------------------------------------------------


def answer(model: BaseModel, status: int = 200) -> web.Response:
    """An API answer, serialised through its model (the one the OpenAPI document describes)."""
    return web.Response(body=model.model_dump_json(), status=status, content_type="application/json")


def error_answer(status: int, message: str, headers: Mapping[str, str] | None = None) -> web.Response:
    body = ErrorAnswer(error=message).model_dump_json(exclude_none=True)
    return web.Response(body=body, status=status, content_type="application/json", headers=headers)


class _BodyTooLarge(web.HTTPClientError):
    """413 without aiohttp's HTTPRequestEntityTooLarge, whose text is always its own."""

    status_code = 413


def refusal(
    kind: type[web.HTTPClientError], message: str, headers: Mapping[str, str] | None = None
) -> web.HTTPClientError:
    """An error answer to raise from a check, JSON like every other API answer."""
    body = ErrorAnswer(error=message).model_dump_json(exclude_none=True)
    return kind(text=body, content_type="application/json", headers=headers)


# --- who may do what (operations.py; the credentials themselves: access.py) ----------------------------


def _reader(request: web.Request) -> None:
    """401 unless the request may read; checked before any body is read."""
    if not reader_accepted(request):
        raise refusal(web.HTTPUnauthorized, "a read token is required", {"WWW-Authenticate": READ_CHALLENGE})


def _operator(request: web.Request) -> str:
    """The acting person's name (?by=, else X-Remediator-User, else "operator"), once the operator token
    checks out as the Bearer token; 401/403 otherwise."""
    scheme, credentials = authorization(request)
    try:
        check_operator(request.app[RUNTIME], credentials if scheme == "bearer" else None)
    except Refused as exc:
        if exc.status == 403:
            raise refusal(web.HTTPForbidden, exc.message) from None
        raise refusal(web.HTTPUnauthorized, exc.message, {"WWW-Authenticate": OPERATOR_CHALLENGE}) from None
    return person_name(request.query.get("by"), request.headers.get("X-Remediator-User"))


# --- the service's own endpoints -------------------------------------------------------------------


async def _healthy(request: web.Request) -> web.Response:
    return web.Response(text="Remediator is Healthy.\n")


async def _ready(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    if runtime.rules.current is None:
        return web.Response(status=503, text="Remediator is not ready: rules not loaded.\n")
    problem = runtime.store.problem()
    if problem is not None:
        return web.Response(status=503, text=f"Remediator is not ready: {problem}\n")
    return web.Response(text="Remediator is Ready.\n")


async def _reload(request: web.Request) -> web.Response:
    """Prometheus keeps this off unless --web.enable-lifecycle; here the operator token guards it, and
    with no token configured it works only when `web.enable_reload` says so. SIGHUP always works."""
    runtime = request.app[RUNTIME]
    if runtime.secrets.operator_token is not None:
        _operator(request)
    elif not runtime.settings.web.enable_reload:
        raise refusal(
            web.HTTPForbidden,
            "reload over HTTP is disabled: configure an operator token or set web.enable_reload (or send SIGHUP)",
        )
    if await runtime.rules.reload():
        return answer(ReloadDone())
    return answer(ReloadFailed(errors=runtime.rules.last_errors), status=400)


async def _metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[RUNTIME].metrics.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def _openapi(request: web.Request) -> web.Response:
    return web.Response(body=request.app[OPENAPI], content_type="application/json")


# --- simulate ---------------------------------------------------------------------------------------


async def _explain(ruleset: RuleSet, dispatcher: Dispatcher, body: bytes) -> tuple[int, bytes]:
    """Parse, check and explain a webhook body: (status, JSON answer), with whether admission would let
    each run start right now (the dispatcher's read-only check). On the loop, in slices: parsing
    is bounded by the body cap (about 10 ms a megabyte), and the alerts are explained a few
    milliseconds at a time, yielding between slices, so the webhook and /-/healthy wait one slice at
    most. (A worker thread would not do: the work holds the GIL, and the loop then waits for it at
    every step of every request, for longer than a slice.)"""
    try:
        notification = parse(body)
    except ValidationError as exc:
        details = describe_errors(exc)
        problem = ErrorAnswer(
            error="invalid Alertmanager webhook payload: " + details[0]["field"],
            details=[ErrorDetail(**d) for d in details],
        )
        return 400, problem.model_dump_json(exclude_none=True).encode()
    if len(notification.alerts) > MAX_SIMULATE_ALERTS:
        message = f"{len(notification.alerts)} alerts: simulate takes at most {MAX_SIMULATE_ALERTS} per request"
        return 413, ErrorAnswer(error=message).model_dump_json(exclude_none=True).encode()
    alerts, context = notification_alerts(notification)
    answers = []
    slice_began = time.monotonic()
    for alert in alerts:
        matches = ruleset.match(alert, context)
        explained = explain_alert(ruleset, alert, context, matches)
        explained["admission"] = [
            {"rule": match.rule.name, **(await dispatcher.admission_now(match, alert.labels)).to_dict()}
            for match in matches
            if match.ok
        ]
        # straight to JSON text: explanations kept alive to the end would make the collector walk them all
        answers.append(SimulatedAlert.model_validate(explained).model_dump_json())
        if time.monotonic() - slice_began > SIMULATE_SLICE_S:
            await asyncio.sleep(0)
            slice_began = time.monotonic()
    return 200, f'{{"alerts":[{",".join(answers)}]}}'.encode()


async def _simulate(request: web.Request) -> web.Response:
    """A webhook body in, the decisions out; nothing stored or run. Authenticated before the body is
    read, bounded (body size, alerts), one request at a time, worked out in slices (see _explain)."""
    _reader(request)
    runtime = request.app[RUNTIME]
    if (problem := json_content_problem(request)) is not None:
        return error_answer(415, problem)
    try:
        body = await read_bounded(request, runtime.settings.limits.max_body_bytes)
    except TooLarge:
        return error_answer(413, f"body larger than the limit of {runtime.settings.limits.max_body_bytes} bytes")
    except Unreadable as exc:
        return error_answer(400, str(exc))
    async with request.app[SIMULATIONS]:
        status, result = await _explain(runtime.rules.rules(), runtime.dispatcher, body)
    return web.Response(body=result, status=status, content_type="application/json")


# --- executions -------------------------------------------------------------------------------------


async def _list_executions(request: web.Request) -> web.Response:
    _reader(request)
    try:
        query = parse_list_query(request.query, max_limit=API_PAGE_SIZE, default_limit=50)
    except QueryError as exc:
        raise refusal(web.HTTPBadRequest, str(exc)) from None
    rows = await request.app[RUNTIME].store.list_executions(query.limit, query.offset, query.filters)
    return answer(ExecutionList.model_validate({"executions": rows, "limit": query.limit, "offset": query.offset}))


async def _get_execution(request: web.Request) -> web.Response:
    _reader(request)
    record = await request.app[RUNTIME].store.get_execution(request.match_info["id"])
    if record is None:
        return error_answer(404, "no such execution")
    return answer(ExecutionReport.model_validate(report_json(record)))


async def _decide(request: web.Request, approved: bool) -> web.Response:
    who = _operator(request)
    try:
        return answer(await decide(request.app[RUNTIME], request.match_info["id"], approved, who))
    except Refused as exc:
        return error_answer(exc.status, exc.message)


async def _approve(request: web.Request) -> web.Response:
    return await _decide(request, True)


async def _deny(request: web.Request) -> web.Response:
    return await _decide(request, False)


async def _ack(request: web.Request) -> web.Response:
    """A person has it: stop further escalation levels and resolve the alert in Alertmanager."""
    who = _operator(request)
    try:
        return answer(await acknowledge(request.app[RUNTIME], request.match_info["id"], who))
    except Refused as exc:
        return error_answer(exc.status, exc.message)


# --- maintenance: pauses and budget resets ---------------------------------------------------------


async def _json_body(request: web.Request, model: type[ApiModel]) -> ApiModel:
    """The body as `model`, read only after the caller checked the token, and bounded."""
    try:
        return model.model_validate_json(await read_bounded(request, MAX_OPERATOR_BODY_BYTES))
    except TooLarge:
        raise refusal(_BodyTooLarge, f"body larger than {MAX_OPERATOR_BODY_BYTES} bytes") from None
    except Unreadable as exc:
        raise refusal(web.HTTPBadRequest, str(exc)) from None
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '(body)'}: {e['msg']}" for e in exc.errors())
        raise refusal(web.HTTPBadRequest, problems) from None


async def _list_pauses(request: web.Request) -> web.Response:
    _reader(request)
    runtime = request.app[RUNTIME]
    silences = runtime.silences.pauses if runtime.silences is not None else []
    return answer(
        PauseList(
            pauses=[Pause.model_validate(p) for p in await runtime.store.active_pauses(runtime.clock.now())],
            silences=[
                SilencePause(
                    id=p.id,
                    created_by=p.created_by,
                    comment=p.comment,
                    ends_at=p.ends_at,
                    matchers=[str(m) for m in p.matchers],
                )
                for p in silences
            ],
        )
    )


async def _add_pause(request: web.Request) -> web.Response:
    who = _operator(request)
    body = await _json_body(request, PauseRequest)
    pause = await add_pause(request.app[RUNTIME], body.rule, body.target, body.reason, who, body.duration_seconds)
    return answer(Paused(id=pause), status=201)


async def _clear_pause(request: web.Request) -> web.Response:
    who = _operator(request)
    pause = pause_id(request.match_info["id"])
    if pause is None or not await clear_pause(request.app[RUNTIME], pause, who):
        return error_answer(404, "no such active pause")
    return answer(Resumed(id=pause))


async def _reset_limits(request: web.Request) -> web.Response:
    who = _operator(request)
    body = await _json_body(request, ResetRequest)
    await reset_limits(request.app[RUNTIME], body.rule, body.target, who)
    return answer(LimitsReset(rule=body.rule, target=body.target, by=who))
