"""The aiohttp application: factory, typed keys, one cleanup context per resource, routes."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.clock import Clock, SystemClock
from service.intake import Intake, WebhookAuth, handle
from service.metrics import Metrics, create_metrics
from service.settings import Secrets, Settings
from service.store import NotificationReceipt, SQLiteStore

log = logging.getLogger("remediator.app")


@dataclass(frozen=True)
class Runtime:
    """What every handler may use; built once per app."""

    settings: Settings
    secrets: Secrets
    clock: Clock
    metrics: Metrics
    store: SQLiteStore


RUNTIME = web.AppKey("runtime", Runtime)
INTAKE = web.AppKey("intake", Intake)


async def _store_ctx(app: web.Application) -> AsyncIterator[None]:
    store = app[RUNTIME].store
    await store.open()
    log.info("store open", extra={"path": str(store.path)})
    yield
    await store.close()
    log.info("store closed")


async def _receive_webhook(request: web.Request) -> web.Response:
    intake = request.app[INTAKE]
    response = await handle(intake, request)
    intake.metrics.webhook_requests.labels(str(response.status)).inc()
    return response


async def _healthy(request: web.Request) -> web.Response:
    return web.Response(text="Remediator is Healthy.\n")


async def _ready(request: web.Request) -> web.Response:
    if not request.app[RUNTIME].store.is_open:
        return web.Response(status=503, text="Remediator is not ready: the store is not open.\n")
    return web.Response(text="Remediator is Ready.\n")


async def _metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[RUNTIME].metrics.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def _ignore_receipt(receipt: NotificationReceipt) -> None:
    """Until the dispatcher reads the store, committed alerts wait there."""


def create_app(settings: Settings, secrets: Secrets, clock: Clock | None = None) -> web.Application:
    runtime = Runtime(
        settings=settings,
        secrets=secrets,
        clock=clock or SystemClock(),
        metrics=create_metrics(),
        store=SQLiteStore(settings.resolve(settings.store.path)),
    )
    app = web.Application(client_max_size=settings.limits.max_body_bytes)
    app[RUNTIME] = runtime
    app[INTAKE] = Intake(
        store=runtime.store,
        auth=WebhookAuth(
            bearer_token=secrets.webhook_bearer_token,
            basic_username=settings.webhook_auth.basic_username,
            basic_password=secrets.webhook_basic_password,
        ),
        metrics=runtime.metrics,
        clock=runtime.clock,
        max_body_bytes=settings.limits.max_body_bytes,
        on_committed=_ignore_receipt,
    )
    app.cleanup_ctx.append(_store_ctx)
    app.router.add_post("/hooks/alertmanager", _receive_webhook)
    app.router.add_get("/-/healthy", _healthy)
    app.router.add_get("/-/ready", _ready)
    app.router.add_get("/metrics", _metrics)
    return app
