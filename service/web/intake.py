"""`POST /hooks/alertmanager`: authenticate, check, validate, commit, answer.

`deliver` is the part after validation, which the reconciler's deliveries go through too.

The answer is 200 only once the notification and each of its alerts are durably committed, so an
acknowledged alert is never lost; 503 when the store cannot commit (Alertmanager retries on 5xx);
4xx for requests that retrying cannot fix. Nothing is stored for a rejected request.

A notification whose every alert is a pure re-send of an occurrence already committed (Alertmanager
re-sends every firing alert of a group on each group change and repeat_interval) is answered from
the store's memory without a commit; `write_resends` writes those deliveries every second and hands
the dispatcher what a rule wants to see again (service.store.remembered).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from service.alerts.webhook import WebhookAlert, WebhookNotification, describe_errors, parse
from service.clock import Clock
from service.errors import RequestError
from service.metrics import Metrics
from service.store import AlertEvent, IntakeStore, NotificationReceipt, OccurrenceSource, StoreError
from service.web.access import as_bytes, same_secret

log = logging.getLogger("remediator.intake")

_READ_CHUNK = 64 * 1024
# JSON is UTF-8 (RFC 8259); a body declared in another charset would be misread, not parsed.
_JSON_CHARSETS = frozenset({"utf-8", "utf8", "us-ascii"})

# How often the deliveries acknowledged from memory are written: what a crash may lose of them.
RESEND_WRITE_INTERVAL_S = 1.0


@dataclass(frozen=True)
class WebhookAuth:
    """Credentials as Alertmanager's `http_config` sends them; both kinds may be configured at once."""

    bearer_token: str | None = None
    basic_username: str | None = None
    basic_password: str | None = None

    @property
    def enabled(self) -> bool:
        return self.bearer_token is not None or self.basic_password is not None

    def challenge(self) -> str:
        schemes = []
        if self.bearer_token is not None:
            schemes.append('Bearer realm="remediator"')
        if self.basic_password is not None:
            schemes.append('Basic realm="remediator", charset="UTF-8"')
        return ", ".join(schemes)

    def accepts(self, authorization: str | None) -> bool:
        if not self.enabled:
            return True
        if not authorization:
            return False
        scheme, _, credentials = authorization.strip().partition(" ")
        credentials = credentials.strip()
        if scheme.lower() == "bearer" and self.bearer_token is not None:
            return same_secret(credentials, self.bearer_token)
        if scheme.lower() == "basic" and self.basic_password is not None and self.basic_username is not None:
            try:
                decoded = base64.b64decode(as_bytes(credentials), validate=True)
            except (binascii.Error, ValueError):
                return False
            username, _, password = decoded.partition(b":")
            # Compare both, always, so the time taken does not say which one was wrong.
            user_ok = same_secret(username, self.basic_username)
            password_ok = same_secret(password, self.basic_password)
            return user_ok and password_ok
        return False


@dataclass(frozen=True)
class Intake:
    store: IntakeStore
    auth: WebhookAuth
    metrics: Metrics
    clock: Clock
    max_body_bytes: int
    wants: Callable[[str, Mapping[str, str]], bool]  # does a rule want an alert (status, labels)?
    on_committed: Callable[[Sequence[AlertEvent]], None]  # hands committed events to the dispatcher


def _error(
    status: int, message: str, details: list[dict[str, str]] | None = None, headers: dict[str, str] | None = None
) -> web.Response:
    body: dict[str, Any] = {"status": "error", "error": message}
    if details:
        body["details"] = details
    return web.json_response(body, status=status, headers=headers)


class TooLarge(RequestError):
    """The body passed the size limit."""


class Unreadable(RequestError):
    """The body could not be read: a Content-Encoding that does not decode (garbage declared gzip)."""


async def read_bounded(request: web.BaseRequest, limit: int) -> bytes:
    """Read the body, giving up as soon as it passes `limit` (chunked bodies have no length to check;
    a compressed body is counted as it decompresses, so a small bomb is stopped at the limit too)."""
    if request.content_length is not None and request.content_length > limit:
        raise TooLarge
    chunks: list[bytes] = []
    size = 0
    try:
        while chunk := await request.content.read(_READ_CHUNK):
            size += len(chunk)
            if size > limit:
                raise TooLarge
            chunks.append(chunk)
    except web.RequestPayloadError as exc:
        raise Unreadable(f"the body cannot be read: {exc.__cause__ or exc}") from None
    return b"".join(chunks)


def json_content_problem(request: web.BaseRequest) -> str | None:
    """Why the body is not JSON we can read (415), or None."""
    # Alertmanager sends exactly this header; parsing one (aiohttp's content_type) costs microseconds.
    if request.headers.get("Content-Type") == "application/json":
        return None
    if request.content_type != "application/json":
        return f"content type must be application/json, got {request.content_type!r}"
    charset = (request.charset or "utf-8").lower()
    if charset not in _JSON_CHARSETS:
        return f"JSON must be UTF-8, got charset {charset!r}"
    return None


async def handle(intake: Intake, request: web.Request) -> web.Response:
    if not intake.auth.accepts(request.headers.get("Authorization")):
        return _error(401, "missing or invalid credentials", headers={"WWW-Authenticate": intake.auth.challenge()})
    if (problem := json_content_problem(request)) is not None:
        return _error(415, problem)
    try:
        body = await read_bounded(request, intake.max_body_bytes)
    except TooLarge:
        return _error(413, f"body larger than the limit of {intake.max_body_bytes} bytes")
    except Unreadable as exc:
        return _error(400, str(exc))
    notification: WebhookNotification | None = None
    try:
        # The whole notification again, byte for byte, is the most common request: answered before
        # it is validated again (the store checks that nothing it says has changed since).
        now = intake.clock.now()
        repeated = intake.store.acknowledge_repeated_body(body, now)
        if repeated is not None:
            _count(intake, repeated, "webhook", remembered=True)
            return _accepted(None, len(repeated.alerts))
        try:
            notification = parse(body)
        except ValidationError as exc:
            details = describe_errors(exc)
            return _error(400, "invalid Alertmanager webhook payload: " + details[0]["field"], details)
        receipt = await deliver(intake, notification, body, received_at=now)
    except StoreError as exc:
        group_key = None if notification is None else notification.groupKey
        log.error("could not store notification", extra={"error": str(exc), "group_key": group_key})
        return _error(503, "the store cannot commit right now; retry", headers={"Retry-After": "5"})
    return _accepted(receipt.notification_id, receipt.alert_count)


def _accepted(notification_id: int | None, alerts: int) -> web.Response:
    # Formatted directly, not through json.dumps: this is the one answer on the hot path.
    number = b"null" if notification_id is None else b"%d" % notification_id
    return web.Response(
        body=b'{"status": "accepted", "notification_id": %s, "alerts": %d}' % (number, alerts),
        content_type="application/json",
    )


async def deliver(
    intake: Intake,
    notification: WebhookNotification,
    body: bytes,
    source: OccurrenceSource = "webhook",
    received_at: datetime | None = None,
) -> NotificationReceipt:
    """A validated notification from either way alerts arrive — a webhook, or the reconciler reading
    Alertmanager (service.flow.reconciler) — committed, counted and handed to the dispatcher.

    A notification of pure re-sends is acknowledged from the store's memory instead: nothing to
    commit or hand over now (`write_resends` does both later). Raises StoreError when the store
    cannot commit: nothing was stored or handed over then. `received_at`: when it arrived (now).
    """
    now = intake.clock.now() if received_at is None else received_at
    if intake.store.acknowledge_resend(notification, body, now):
        _count(intake, notification, source, remembered=True)
        return NotificationReceipt(None, len(notification.alerts), ())
    # An in-memory index lookup (microseconds), asked here rather than by the dispatcher so that an
    # alert no rule wants is stored as dispatched in the same commit instead of costing a second one.
    wanted = [intake.wants(alert.status, alert.labels) for alert in notification.alerts]
    started = time.perf_counter()
    receipt = await intake.store.record_notification(notification, body, now, wanted, source=source)
    intake.metrics.webhook.observe_commit(time.perf_counter() - started)
    intake.on_committed(receipt.events)
    _count(intake, notification, source, remembered=False)
    for index in receipt.new_unmatched:
        _unmatched(intake, notification.alerts[index], source)
    return receipt


def _count(intake: Intake, notification: WebhookNotification, source: OccurrenceSource, *, remembered: bool) -> None:
    if remembered:
        intake.metrics.webhook.count_remembered()
    for alert in notification.alerts:
        intake.metrics.webhook.count_alert(alert.status, source)


def _unmatched(intake: Intake, alert: WebhookAlert, source: OccurrenceSource) -> None:
    """An alert no rule matches is acknowledged like any other, then nothing acts on it: say so once
    per occurrence (its re-sends are not repeated), in the log, /metrics and the index page."""
    alertname = alert.labels.get("alertname", "")
    intake.metrics.unmatched.count(alertname)
    if log.isEnabledFor(logging.INFO):  # a storm of new alerts comes this way: no record built for nothing
        log.info(
            "no rule matches the alert",
            extra={"alertname": alertname, "fingerprint": alert.fingerprint, "status": alert.status, "source": source},
        )


async def write_resends(intake: Intake) -> None:
    """Write the deliveries acknowledged from memory and hand the dispatcher the events a rule wants
    to see. Raises StoreError when the store cannot commit (they wait for the next write)."""
    intake.on_committed(await intake.store.write_resends(intake.wants))


async def write_resends_every(intake: Intake, interval: float = RESEND_WRITE_INTERVAL_S) -> None:
    """Forever: `write_resends` every `interval`."""
    while True:
        await asyncio.sleep(interval)
        try:
            await write_resends(intake)
        except StoreError as exc:  # /-/ready says what is wrong
            log.error("could not write the deliveries acknowledged from memory", extra={"error": str(exc)})
