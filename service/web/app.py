"""The aiohttp application: the factory that builds the runtime, one cleanup context per resource, routes.

Only the CLI and the tests import this module: handlers take what they need from the app through the
keys in runtime.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import threading
from collections.abc import AsyncIterator
from datetime import UTC
from typing import Literal

from aiohttp import web
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from service.alerts.matchers import parse_matcher
from service.alerts.webhook import WebhookNotification
from service.clock import Clock, SystemClock
from service.escalation.escalator import Escalator, Policy
from service.flow.admission import StormGuard
from service.flow.dispatcher import Dispatcher, DispatchSettings
from service.flow.executor import Endpoints, Executor
from service.flow.ports import FlowMetrics
from service.flow.reconciler import ReconcileConfig, Reconciler
from service.flow.retention import prune
from service.flow.silences import SilenceWatcher
from service.metrics import create_metrics
from service.playbooks.templating import TemplateEngine
from service.redaction import DEFAULT_PATTERNS, Redactor
from service.settings import Secrets, Settings
from service.steps.ssh_connections import SshConnections, SshOptions
from service.store import StoreError, new_store
from service.web.api import add_api_routes
from service.web.intake import Intake, WebhookAuth, deliver, write_resends, write_resends_every
from service.web.openapi import openapi_document
from service.web.pages import add_page_routes
from service.web.runtime import INTAKE, OPENAPI, RUNTIME, SCHEDULER, SIMULATIONS, RulesHolder, Runtime

log = logging.getLogger("remediator.app")
_PAGE_CHECK_S = 1.0  # how often refusals whose page waited for their target's run are looked at

# RUNTIME too: benchmarks and tests reach into the app they built through it.
__all__ = ["RECONCILER", "RUNTIME", "create_app"]

# The reconciler, when reconcile.enabled (tests reach it to run a pass).
RECONCILER = web.AppKey("reconciler", Reconciler)


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


async def _reconcile_ctx(app: web.Application) -> AsyncIterator[None]:
    """Before the flow starts and before the service serves: one pass over Alertmanager's active
    alerts (bounded by reconcile.start_timeout; an Alertmanager that cannot be reached is logged and
    does not stop the start), then a pass every interval in the background."""
    reconciler = app.get(RECONCILER)
    task = None
    if reconciler is not None:
        result = await reconciler.run_once()
        if result is not None and result.failed:
            log.warning("start-up reconciliation: Alertmanager not read", extra={"alertmanagers": list(result.failed)})
        task = asyncio.create_task(reconciler.run(result), name="reconciler")
    yield
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _resends_ctx(app: web.Application) -> AsyncIterator[None]:
    """Deliveries acknowledged from memory written every second, and once more at the end (what the
    stopped dispatcher does not see then, it reads from the store's queue at the next start)."""
    intake = app[INTAKE]
    task = asyncio.create_task(write_resends_every(intake), name="resends")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    try:
        await write_resends(intake)
    except StoreError as exc:
        log.error("could not write the deliveries acknowledged from memory", extra={"error": str(exc)})


async def _flow_ctx(app: web.Application) -> AsyncIterator[None]:
    runtime = app[RUNTIME]
    await runtime.dispatcher.recover()
    tasks = [
        asyncio.create_task(runtime.dispatcher.run(), name="dispatcher"),
        asyncio.create_task(_page_due(runtime.dispatcher), name="paging"),
    ]
    yield
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await runtime.executor.shutdown()


async def _page_due(dispatcher: Dispatcher) -> None:
    """Every second: refusals whose page waited for their target's run (service.flow.paging)."""
    while True:
        try:
            await dispatcher.page_due()
        except Exception:  # the store failing now: the refusals stay due for the next pass
            log.exception("paging pass failed; retrying")
        await asyncio.sleep(_PAGE_CHECK_S)


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


def dispatch_settings(settings: Settings) -> DispatchSettings:
    """The dispatcher's service-wide inputs: the storm guard and dry_run for admission (`remediator explain`
    uses them too), and the refusal grace for paging."""
    return DispatchSettings(
        StormGuard(settings.limits.storm_max_admissions, settings.limits.storm_window_seconds),
        settings.dry_run,
        settings.escalation.refusal_grace,
    )


def _ssh_connections(settings: Settings) -> SshConnections:
    ssh = settings.ssh
    known_hosts = None if ssh.known_hosts is None else settings.resolve(ssh.known_hosts)
    return SshConnections(
        SshOptions(
            known_hosts=known_hosts,
            connect_timeout=ssh.connect_timeout,
            keepalive_interval=ssh.keepalive_interval,
            keepalive_count_max=ssh.keepalive_count_max,
            max_sessions_per_host=ssh.max_sessions_per_host,
            failure_backoff=ssh.failure_backoff,
        )
    )


def create_app(settings: Settings, secrets: Secrets, clock: Clock | None = None) -> web.Application:
    clock = clock or SystemClock()
    metrics = create_metrics()
    store = new_store(
        settings.resolve(settings.store.path), settings.store.synchronous, settings.store.remembered_occurrences
    )
    holder = RulesHolder(settings, metrics, clock)
    holder.load()  # the CLI refuses to serve with invalid rules; here a failure leaves /-/ready at 503
    escalator = Escalator(store, clock, Policy.from_settings(settings, secrets, clock), metrics)

    flow_metrics = FlowMetrics(metrics)
    executor = Executor(
        store=store,
        clock=clock,
        endpoints=Endpoints(
            settings.prometheus_url,
            settings.alertmanager_url,
            settings.nats_url,
            settings.nats_monitor_url,
            settings.limits.output_limit_bytes,
        ),
        engine=TemplateEngine(),
        escalation=escalator,
        max_concurrent=settings.limits.max_concurrent_executions,
        observer=flow_metrics,
        redactor=Redactor(secrets.values(), (*DEFAULT_PATTERNS, *settings.redact_patterns)),
        ssh=_ssh_connections(settings),
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
    dispatcher = Dispatcher(
        store=store,
        rules=holder.rules,
        executor=executor,
        clock=clock,
        settings=dispatch_settings(settings),
        escalation=escalator,
        decisions=flow_metrics,
        pauses=silences,
    )
    runtime = Runtime(settings, secrets, clock, metrics, store, holder, escalator, executor, dispatcher, silences)
    app = web.Application(client_max_size=settings.limits.max_body_bytes)
    app[RUNTIME] = runtime
    app[OPENAPI] = json.dumps(openapi_document()).encode()
    app[SIMULATIONS] = asyncio.Semaphore(1)

    app[INTAKE] = intake = Intake(
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
        on_committed=dispatcher.submit,
    )
    if settings.reconcile.enabled:

        async def reconciled(notification: WebhookNotification, body: bytes, source: Literal["reconcile"]) -> object:
            return await deliver(intake, notification, body, source)

        app[RECONCILER] = Reconciler(
            store=store,
            wants=dispatcher.wants,
            deliver=reconciled,
            clock=clock,
            config=ReconcileConfig(
                urls=tuple(settings.alertmanagers()),
                interval=settings.reconcile.interval,
                idle_interval=settings.reconcile.idle_interval,
                timeout=settings.reconcile.timeout,
                start_timeout=settings.reconcile.start_timeout,
            ),
            observer=metrics.reconcile,
        )
    app.cleanup_ctx.extend(
        [
            _store_ctx,
            _scheduler_ctx,
            _escalation_ctx,
            _silences_ctx,
            _reconcile_ctx,
            _resends_ctx,
            _flow_ctx,
            _sighup_ctx,
        ]
    )
    add_api_routes(app)
    add_page_routes(app)
    return app
