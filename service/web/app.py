"""The aiohttp application: factory, typed keys, one cleanup context per resource, routes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import threading
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, timedelta
from typing import TypeVar

from aiohttp import web
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ValidationError

from service.alerts.matchers import parse_matcher
from service.alerts.webhook import describe_errors, parse
from service.clock import Clock, SystemClock
from service.escalation.escalator import Escalator, Policy
from service.flow.admission import StormGuard
from service.flow.dispatcher import Dispatcher, DispatchSettings
from service.flow.executor import Endpoints, Executor
from service.flow.retention import prune
from service.flow.silences import SilenceWatcher
from service.metrics import Metrics, create_metrics
from service.playbooks.templating import TemplateEngine
from service.redaction import DEFAULT_PATTERNS, Redactor
from service.reports.report import report_json
from service.rules.explain import explain_alert, notification_alerts
from service.rules.loading import load_ruleset
from service.rules.ruleset import RuleSet
from service.settings import Secrets, Settings
from service.store import NotificationReceipt, SQLiteStore
from service.web.access import OPERATOR_CHALLENGE, READ_CHALLENGE, as_bytes, bearer_is, may_read, same_secret
from service.web.api_models import (
    Acknowledged,
    Decided,
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
from service.web.intake import Intake, TooLarge, Unreadable, WebhookAuth, handle, json_content_problem, read_bounded
from service.web.listing import QueryError, parse_list_query
from service.web.openapi import API_PAGE_SIZE, MAX_PAUSE_ID, openapi_document
from service.yamlload import ConfigErrors

log = logging.getLogger("remediator.app")

ApiModel = TypeVar("ApiModel", bound=BaseModel)

# Simulate explains at most this many alerts per request (each against every rule), one request at a time.
MAX_SIMULATE_ALERTS = 1000
# Pause and reset bodies are a few fields; the webhook's 1 MiB would only be room to waste.
MAX_OPERATOR_BODY_BYTES = 16 * 1024


@dataclass
class RulesHolder:
    """The live rules and playbooks, swapped whole on a good reload; a bad one keeps the old set.

    Executions hold their own reference to the rule match and playbook they started with, so a
    reload never changes a run in flight.
    """

    settings: Settings
    metrics: Metrics
    clock: Clock
    current: RuleSet | None = None
    last_errors: list[str] = field(default_factory=list)

    def load(self) -> bool:
        """Load now (at start-up, before the loop runs)."""
        return self._apply(self._parse())

    async def reload(self) -> bool:
        """Parse in a worker thread, so thousands of rules never stall the webhook; swap on the loop."""
        return self._apply(await asyncio.to_thread(self._parse))

    def _parse(self) -> RuleSet | ConfigErrors:
        s = self.settings
        try:
            return load_ruleset([g for g in s.rules if g], [g for g in s.playbooks if g], s.base_dir)
        except ConfigErrors as exc:
            return exc

    def _apply(self, loaded: RuleSet | ConfigErrors) -> bool:
        if isinstance(loaded, ConfigErrors):
            self.last_errors = [str(e) for e in loaded.errors]
            self.metrics.config_last_reload_successful.set(0)
            log.error("reload refused: the old rules stay", extra={"errors": self.last_errors})
            return False
        self.current, self.last_errors = loaded, []
        self.metrics.config_last_reload_successful.set(1)
        self.metrics.config_last_reload_success_timestamp.set(self.clock.now().timestamp())
        log.info("rules loaded", extra={"rules": len(loaded.rules), "playbooks": len(loaded.playbooks)})
        return True

    def rules(self) -> RuleSet:
        assert self.current is not None, "rules are loaded before the app serves"
        return self.current


@dataclass(frozen=True)
class Runtime:
    """What every handler may use; built once per app."""

    settings: Settings
    secrets: Secrets
    clock: Clock
    metrics: Metrics
    store: SQLiteStore
    rules: RulesHolder
    escalator: Escalator
    executor: Executor
    dispatcher: Dispatcher
    silences: SilenceWatcher | None


RUNTIME = web.AppKey("runtime", Runtime)
INTAKE = web.AppKey("intake", Intake)
SCHEDULER = web.AppKey("scheduler", AsyncIOScheduler)
OPENAPI = web.AppKey("openapi", bytes)
SIMULATIONS = web.AppKey("simulations", asyncio.Semaphore)
SIMULATE_SLICE_S = 0.005  # the longest a simulation holds the loop between two yields


async def _store_ctx(app: web.Application) -> AsyncIterator[None]:
    store = app[RUNTIME].store
    await store.open()
    log.info("store open", extra={"path": str(store.path)})
    yield
    await store.close()
    log.info("store closed")


async def _scheduler_ctx(app: web.Application) -> AsyncIterator[None]:
    """One scheduler for the timed jobs: escalation levels and the store's retention."""
    runtime = app[RUNTIME]
    scheduler = AsyncIOScheduler(event_loop=asyncio.get_running_loop(), timezone=UTC)
    store_settings = runtime.settings.store
    scheduler.add_job(
        prune,
        "interval",
        seconds=store_settings.prune_interval_seconds,
        args=(runtime.store, runtime.clock, store_settings.retention_days),
        id="retention",
        next_run_time=runtime.clock.now(),  # a store that grew while we were down shrinks at once
        coalesce=True,
        max_instances=1,
    )
    scheduler.start()
    app[SCHEDULER] = scheduler
    yield
    scheduler.shutdown(wait=False)


async def _silences_ctx(app: web.Application) -> AsyncIterator[None]:
    """Poll Alertmanager's silences for remediation pauses, when configured."""
    watcher = app[RUNTIME].silences
    task = asyncio.create_task(watcher.run(), name="silences") if watcher is not None else None
    yield
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _escalation_ctx(app: web.Application) -> AsyncIterator[None]:
    """The outbox worker and the levels: after the store opens, before the flow escalates."""
    async with app[RUNTIME].escalator.running(app[SCHEDULER]):
        yield


async def _flow_ctx(app: web.Application) -> AsyncIterator[None]:
    runtime = app[RUNTIME]
    await runtime.dispatcher.recover()
    task = asyncio.create_task(runtime.dispatcher.run(), name="dispatcher")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await runtime.executor.shutdown()


async def _sighup_ctx(app: web.Application) -> AsyncIterator[None]:
    """SIGHUP reloads rules and playbooks, as it does for Prometheus and Alertmanager."""
    loop = asyncio.get_running_loop()
    installed = threading.current_thread() is threading.main_thread()
    if installed:
        holder = app[RUNTIME].rules
        pending: set[asyncio.Task[bool]] = set()

        def on_sighup() -> None:
            task = asyncio.create_task(holder.reload())
            pending.add(task)  # keep a reference until it is done
            task.add_done_callback(pending.discard)

        loop.add_signal_handler(signal.SIGHUP, on_sighup)
    yield
    if installed:
        loop.remove_signal_handler(signal.SIGHUP)


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


# --- who may do what (service/web/access.py) ------------------------------------------------------------


def operator_token_accepted(runtime: Runtime, given: str) -> bool | None:
    """Whether `given` is the operator token (constant-time); None when no token is configured."""
    token = runtime.secrets.operator_token
    if token is None:
        return None
    return same_secret(given.strip(), token)


def reader_accepted(request: web.Request) -> bool:
    """Whether the request may read (always, unless a read token is configured)."""
    secrets = request.app[RUNTIME].secrets
    return may_read(request, secrets.read_token, secrets.operator_token)


def _reader(request: web.Request) -> None:
    """401 unless the request may read; checked before any body is read."""
    if not reader_accepted(request):
        raise refusal(web.HTTPUnauthorized, "a read token is required", {"WWW-Authenticate": READ_CHALLENGE})


def _person(request: web.Request) -> str:
    """Who acts, as the request names them: ?by=, else X-Remediator-User, else "operator"."""
    for given in (request.query.get("by"), request.headers.get("X-Remediator-User")):
        name = " ".join(as_bytes(given).decode("utf-8", "replace").split())[:100] if given else ""
        if name:
            return name
    return "operator"


def _operator(request: web.Request) -> str:
    """The approver's name, once the operator token checks out; 401/403 otherwise."""
    runtime = request.app[RUNTIME]
    if runtime.secrets.operator_token is None:
        raise refusal(web.HTTPForbidden, "no operator token is configured: operator actions are disabled")
    if not bearer_is(request, runtime.secrets.operator_token):
        raise refusal(web.HTTPUnauthorized, "the operator token is required", {"WWW-Authenticate": OPERATOR_CHALLENGE})
    return _person(request)


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


async def _explain(ruleset: RuleSet, body: bytes) -> tuple[int, bytes]:
    """Parse, check and explain a webhook body: (status, JSON answer). On the loop, in slices: parsing
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
        # straight to JSON text: explanations kept alive to the end would make the collector walk them all
        answers.append(SimulatedAlert.model_validate(explain_alert(ruleset, alert, context)).model_dump_json())
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
        status, result = await _explain(runtime.rules.rules(), body)
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
    runtime = request.app[RUNTIME]
    execution_id = request.match_info["id"]
    if not runtime.executor.approvals.decide(execution_id, approved, who):
        decided = [a for a in await runtime.store.approvals_for(execution_id) if a.decision is not None]
        error = "no approval is pending for this execution"
        if decided:
            error += f": the last one was {decided[-1].decision} by {decided[-1].approver}"
        return error_answer(409, error)
    return answer(Decided(status="approved" if approved else "denied", by=who))


async def _approve(request: web.Request) -> web.Response:
    return await _decide(request, True)


async def _deny(request: web.Request) -> web.Response:
    return await _decide(request, False)


async def _ack(request: web.Request) -> web.Response:
    """A person has it: stop further escalation levels and resolve the alert in Alertmanager."""
    who = _operator(request)
    runtime = request.app[RUNTIME]
    execution_id = request.match_info["id"]
    if await runtime.store.get_execution(execution_id) is None:
        return error_answer(404, "no such execution")
    closed = await runtime.escalator.acknowledge(execution_id, who)
    if not closed:
        return error_answer(409, "no open escalation for this execution")
    return answer(Acknowledged(by=who, escalations=closed))


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


def pause_id(text: str) -> int | None:
    """A pause id from a path, or None when it cannot be one (which is a 404, not an overflow)."""
    return int(text) if text.isascii() and text.isdigit() and 0 < int(text) <= MAX_PAUSE_ID else None


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


async def add_pause(runtime: Runtime, rule: str, target: str, reason: str, by: str, seconds: float | None) -> int:
    """Pause automation for a rule and/or target ('*' is every one); the API and the page call this."""
    now = runtime.clock.now()
    until = None if seconds is None else now + timedelta(seconds=seconds)
    pause = await runtime.store.add_pause(rule, target, reason, by, now, until)
    log.warning("automation paused", extra={"rule": rule, "target": target, "by": by, "pause": pause})
    return pause


async def clear_pause(runtime: Runtime, pause: int, by: str) -> bool:
    cleared = await runtime.store.clear_pause(pause, runtime.clock.now())
    if cleared:
        log.warning("automation resumed", extra={"pause": pause, "by": by})
    return cleared


async def reset_limits(runtime: Runtime, rule: str, target: str, by: str) -> None:
    await runtime.store.reset_limits(rule, target, by, runtime.clock.now())
    log.warning("limits reset", extra={"rule": rule, "target": target, "by": by})


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


def create_app(settings: Settings, secrets: Secrets, clock: Clock | None = None) -> web.Application:
    clock = clock or SystemClock()
    metrics = create_metrics()
    store = SQLiteStore(settings.resolve(settings.store.path), settings.store.synchronous)
    holder = RulesHolder(settings, metrics, clock)
    holder.load()  # the CLI refuses to serve with invalid rules; here a failure leaves /-/ready at 503
    escalator = Escalator(store, clock, Policy.from_settings(settings, secrets, clock), metrics)

    def finished(rule: str, playbook: str, outcome: str, seconds: float) -> None:
        metrics.executions.labels(rule, playbook, outcome).inc()
        metrics.execution_duration_seconds.labels(rule, outcome).observe(seconds)

    executor = Executor(
        store,
        clock,
        Endpoints(
            settings.prometheus_url,
            settings.alertmanager_url,
            settings.nats_url,
            settings.nats_monitor_url,
            settings.limits.output_limit_bytes,
        ),
        TemplateEngine(),
        escalator.escalate,
        settings.limits.max_concurrent_executions,
        finished,
        approval_hooks=escalator,
        redactor=Redactor(secrets.values(), (*DEFAULT_PATTERNS, *settings.redact_patterns)),
    )
    silences = (
        SilenceWatcher(
            settings.alertmanager_url,
            parse_matcher(settings.silence_pause.marker),
            settings.silence_pause.interval_seconds,
        )
        if settings.silence_pause is not None
        else None
    )

    def silenced_by(labels: Mapping[str, str]) -> str | None:
        pause = silences.pause_for(labels) if silences is not None else None
        return None if pause is None else pause.describe()

    dispatcher = Dispatcher(
        store,
        holder.rules,
        executor,
        clock,
        DispatchSettings(
            StormGuard(settings.limits.storm_max_admissions, settings.limits.storm_window_seconds), settings.dry_run
        ),
        lambda rule, decision, reason: metrics.admission_decisions.labels(rule, decision, reason).inc(),
        escalator.escalate,
        escalator.original_resolved,
        silenced_by,
    )
    runtime = Runtime(settings, secrets, clock, metrics, store, holder, escalator, executor, dispatcher, silences)
    app = web.Application(client_max_size=settings.limits.max_body_bytes)
    app[RUNTIME] = runtime
    app[OPENAPI] = json.dumps(openapi_document()).encode()
    app[SIMULATIONS] = asyncio.Semaphore(1)

    def committed(receipt: NotificationReceipt) -> None:
        dispatcher.submit(receipt.events)

    app[INTAKE] = Intake(
        store=store,
        auth=WebhookAuth(
            bearer_token=secrets.webhook_bearer_token,
            basic_username=settings.webhook_auth.basic_username,
            basic_password=secrets.webhook_basic_password,
        ),
        metrics=metrics,
        clock=clock,
        max_body_bytes=settings.limits.max_body_bytes,
        wants=dispatcher.wants,
        on_committed=committed,
    )
    app.cleanup_ctx.extend([_store_ctx, _scheduler_ctx, _escalation_ctx, _silences_ctx, _flow_ctx, _sighup_ctx])
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
    from service.web.pages import add_page_routes  # imported here: the pages import RUNTIME from this module

    add_page_routes(app)
    return app
