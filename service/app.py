"""The aiohttp application: factory, typed keys, one cleanup context per resource, routes."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import signal
import threading
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, timedelta
from typing import TypeVar

from aiohttp import web
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from service.admission import StormGuard
from service.checks import explain_payload
from service.clock import Clock, SystemClock
from service.dispatcher import Dispatcher, DispatchSettings
from service.escalation import Escalator, Policy
from service.executor import Endpoints, Executor
from service.intake import Intake, WebhookAuth, handle
from service.matchers import parse_matcher
from service.metrics import Metrics, create_metrics
from service.redaction import DEFAULT_PATTERNS, Redactor
from service.report import report_json
from service.retention import prune
from service.rules import RuleSet, load_ruleset
from service.settings import Secrets, Settings
from service.silences import SilenceWatcher
from service.store import NotificationReceipt, SQLiteStore
from service.templating import TemplateEngine
from service.yamlload import ConfigErrors

log = logging.getLogger("remediator.app")

ApiModel = TypeVar("ApiModel", bound=BaseModel)


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


async def _healthy(request: web.Request) -> web.Response:
    return web.Response(text="Remediator is Healthy.\n")


async def _ready(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    if not runtime.store.is_open or runtime.rules.current is None:
        return web.Response(status=503, text="Remediator is not ready: store or rules not loaded.\n")
    return web.Response(text="Remediator is Ready.\n")


async def _reload(request: web.Request) -> web.Response:
    holder = request.app[RUNTIME].rules
    if await holder.reload():
        return web.json_response({"status": "success"})
    return web.json_response({"status": "error", "errors": holder.last_errors}, status=400)


async def _metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[RUNTIME].metrics.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def _simulate(request: web.Request) -> web.Response:
    try:
        payload = json.loads(await request.read())
        result = explain_payload(request.app[RUNTIME].rules.rules(), payload)
    except (ValueError, UnicodeDecodeError) as exc:
        return web.json_response({"status": "error", "error": str(exc)}, status=400)
    return web.json_response(result)


def _page_args(request: web.Request) -> tuple[int, int, dict[str, str]]:
    try:
        limit = max(1, min(500, int(request.query.get("limit", "50"))))
        offset = max(0, int(request.query.get("offset", "0")))
    except ValueError:
        raise web.HTTPBadRequest(text="limit and offset must be integers") from None
    filters = {
        k: v for k, v in request.query.items() if k in ("state", "rule", "alertname", "target", "since", "until")
    }
    return limit, offset, filters


async def _list_executions(request: web.Request) -> web.Response:
    limit, offset, filters = _page_args(request)
    rows = await request.app[RUNTIME].store.list_executions(limit, offset, filters)
    return web.json_response({"executions": rows, "limit": limit, "offset": offset})


async def _get_execution(request: web.Request) -> web.Response:
    record = await request.app[RUNTIME].store.get_execution(request.match_info["id"])
    if record is None:
        return web.json_response({"status": "error", "error": "no such execution"}, status=404)
    return web.json_response(report_json(record), dumps=lambda obj: json.dumps(obj, default=str))


def operator_token_accepted(runtime: Runtime, given: str) -> bool | None:
    """Whether `given` is the operator token (constant-time); None when no token is configured."""
    token = runtime.secrets.operator_token
    if token is None:
        return None
    return hmac.compare_digest(given.strip().encode(), token.encode())


def _operator(request: web.Request) -> str:
    """The approver's name, once the operator token checks out; 401/403 otherwise."""
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    accepted = operator_token_accepted(request.app[RUNTIME], given if scheme.lower() == "bearer" else "")
    if accepted is None:
        raise web.HTTPForbidden(text="no operator token is configured: approvals are disabled")
    if not accepted or scheme.lower() != "bearer":
        raise web.HTTPUnauthorized(headers={"WWW-Authenticate": 'Bearer realm="remediator-operator"'})
    return request.query.get("by") or request.headers.get("X-Remediator-User") or "operator"


async def _decide(request: web.Request, approved: bool) -> web.Response:
    who = _operator(request)
    runtime = request.app[RUNTIME]
    execution_id = request.match_info["id"]
    if not runtime.executor.approvals.decide(execution_id, approved, who):
        decided = [a for a in await runtime.store.approvals_for(execution_id) if a.decision is not None]
        error = "no approval is pending for this execution"
        if decided:
            error += f": the last one was {decided[-1].decision} by {decided[-1].approver}"
        return web.json_response({"status": "error", "error": error}, status=409)
    return web.json_response({"status": "approved" if approved else "denied", "by": who})


class PauseRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rule: str = Field(default="*", min_length=1)
    target: str = Field(default="*", min_length=1)
    reason: str = Field(min_length=1, max_length=1000)
    duration_seconds: float | None = Field(default=None, gt=0, le=30 * 86400)


class ResetRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rule: str = Field(min_length=1)
    target: str = Field(min_length=1)


async def _json_body(request: web.Request, model: type[ApiModel]) -> ApiModel:
    try:
        return model.model_validate_json(await request.read())
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '(body)'}: {e['msg']}" for e in exc.errors())
        raise web.HTTPBadRequest(
            text=json.dumps({"status": "error", "error": problems}), content_type="application/json"
        ) from None


async def _list_pauses(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    silences = runtime.silences.pauses if runtime.silences is not None else []
    return web.json_response(
        {
            "pauses": await runtime.store.active_pauses(runtime.clock.now()),
            "silences": [
                {
                    "id": p.id,
                    "created_by": p.created_by,
                    "comment": p.comment,
                    "ends_at": p.ends_at,
                    "matchers": [str(m) for m in p.matchers],
                }
                for p in silences
            ],
        }
    )


async def add_pause(runtime: Runtime, rule: str, target: str, reason: str, by: str, seconds: float | None) -> int:
    """Pause automation for a rule and/or target ('*' is every one); the API and the page call this."""
    now = runtime.clock.now()
    until = None if seconds is None else now + timedelta(seconds=seconds)
    pause_id = await runtime.store.add_pause(rule, target, reason, by, now, until)
    log.warning("automation paused", extra={"rule": rule, "target": target, "by": by, "pause": pause_id})
    return pause_id


async def clear_pause(runtime: Runtime, pause_id: int, by: str) -> bool:
    cleared = await runtime.store.clear_pause(pause_id, runtime.clock.now())
    if cleared:
        log.warning("automation resumed", extra={"pause": pause_id, "by": by})
    return cleared


async def reset_limits(runtime: Runtime, rule: str, target: str, by: str) -> None:
    await runtime.store.reset_limits(rule, target, by, runtime.clock.now())
    log.warning("limits reset", extra={"rule": rule, "target": target, "by": by})


async def _add_pause(request: web.Request) -> web.Response:
    who = _operator(request)
    body = await _json_body(request, PauseRequest)
    pause_id = await add_pause(request.app[RUNTIME], body.rule, body.target, body.reason, who, body.duration_seconds)
    return web.json_response({"status": "paused", "id": pause_id}, status=201)


async def _clear_pause(request: web.Request) -> web.Response:
    who = _operator(request)
    try:
        pause_id = int(request.match_info["id"])
    except ValueError:
        raise web.HTTPNotFound() from None
    if not await clear_pause(request.app[RUNTIME], pause_id, who):
        return web.json_response({"status": "error", "error": "no such active pause"}, status=404)
    return web.json_response({"status": "resumed", "id": pause_id})


async def _reset_limits(request: web.Request) -> web.Response:
    who = _operator(request)
    body = await _json_body(request, ResetRequest)
    await reset_limits(request.app[RUNTIME], body.rule, body.target, who)
    return web.json_response({"status": "reset", "rule": body.rule, "target": body.target, "by": who})


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
        return web.json_response({"status": "error", "error": "no such execution"}, status=404)
    closed = await runtime.escalator.acknowledge(execution_id, who)
    if not closed:
        return web.json_response({"status": "error", "error": "no open escalation for this execution"}, status=409)
    return web.json_response({"status": "acknowledged", "by": who, "escalations": closed})


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
    from service.pages import add_page_routes  # imported here: the pages import RUNTIME from this module

    add_page_routes(app)
    return app
