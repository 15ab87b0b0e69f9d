"""Channels: where an escalation message goes, and in what shape.

Each channel builds its own payload from a notice (`payload`, when the escalator queues the message
in the outbox) and sends it (`send`, when the outbox worker delivers; the worker retries). Every
send has its own hard timeout and fails with `DeliveryError` carrying a short reason for the report;
a channel never retries itself.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Protocol

import aiohttp
import nats
import nats.errors

from service.clock import Clock
from service.errors import RemediatorError
from service.escalation.messages import Notice
from service.settings import ChannelSettings, Secrets, Settings

_ERROR_BODY_CHARS = 300

log = logging.getLogger("remediator.escalation")


class DeliveryError(RemediatorError):
    """A delivery attempt failed; the message is what the report and the log show."""


class Channel(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def type(self) -> str: ...
    @property
    def timeout(self) -> float: ...
    def payload(self, notice: Notice) -> dict[str, Any]: ...
    async def send(self, session: aiohttp.ClientSession, payload: Mapping[str, Any]) -> None: ...


@dataclass(frozen=True)
class Retry:
    retries: int
    backoff: float
    max_backoff: float

    def delay(self, attempts: int) -> float | None:
        """Seconds before the next try after `attempts` failed ones; None once retries are spent."""
        if attempts > self.retries:
            return None
        return min(self.max_backoff, self.backoff * 2.0 ** min(attempts - 1, 32))


async def _post_json(session: aiohttp.ClientSession, url: str, body: object, within: float) -> None:
    try:
        async with session.post(url, json=body, timeout=aiohttp.ClientTimeout(total=within)) as resp:
            if resp.status >= 300:
                text = (await resp.text(errors="replace"))[:_ERROR_BODY_CHARS].strip()
                raise DeliveryError(f"HTTP {resp.status}: {text}" if text else f"HTTP {resp.status}")
    except TimeoutError:
        raise DeliveryError(f"no answer within {within:g}s") from None
    except aiohttp.ClientError as exc:
        raise DeliveryError(f"{type(exc).__name__}: {exc}") from None


@dataclass(frozen=True)
class AlertmanagerChannel:
    """POSTs one alert to Alertmanager's API v2, so its existing routes (PagerDuty, email...) page.

    It goes to every Alertmanager of an HA pair or cluster at once, as Prometheus sends its alerts:
    alerts are not shared between replicas (only their notification log is), so the page leaves as
    long as one replica takes it. A send succeeds when one does; one that was down gets the alert
    with the next re-post.

    The payload is the alert without `endsAt` while the escalation is open: it is set here, at send
    time, `ends_after` ahead, because Alertmanager resolves an alert whose `endsAt` passes without a
    re-post, and a message that waited in the outbox must not arrive already expired.
    """

    name: str
    urls: tuple[str, ...]
    timeout: float
    clock: Clock
    ends_after: float
    type: str = "alertmanager"

    def payload(self, notice: Notice) -> dict[str, Any]:
        facts, closing = notice.facts, notice.closing
        annotations = {"summary": facts["summary"], "report_url": facts["report_url"]}
        for key in ("approve_url", "deny_url", "deadline"):
            if key in facts:
                annotations[key] = facts[key]
        if closing is not None:
            annotations["closed"] = f"{closing['state']} by {closing['by']}: {closing['reason']}"
        return {
            "labels": dict(facts["labels"]),
            "annotations": annotations,
            "generatorURL": facts["report_url"],
            "startsAt": facts["opened_at"],
            # open: endsAt is set when it is sent (below); closed: resolved now
            "endsAt": None if closing is None else closing["closed_at"],
        }

    async def send(self, session: aiohttp.ClientSession, payload: Mapping[str, Any]) -> None:
        alert = dict(payload)
        if alert.get("endsAt") is None:
            alert["endsAt"] = (self.clock.now() + timedelta(seconds=self.ends_after)).isoformat()
        sent = await asyncio.gather(
            *(_post_json(session, f"{url}/api/v2/alerts", [alert], self.timeout) for url in self.urls),
            return_exceptions=True,
        )
        failures = [(url, result) for url, result in zip(self.urls, sent, strict=True) if result is not None]
        for _url, result in failures:
            if not isinstance(result, DeliveryError):
                raise result  # a bug, not an Alertmanager that is down
        if len(failures) == len(self.urls):
            raise DeliveryError("; ".join(f"{url}: {error}" for url, error in failures))
        for url, error in failures:
            log.warning("an Alertmanager did not take the alert; others did", extra={"url": url, "error": str(error)})


def _event(notice: Notice) -> dict[str, Any]:
    """The generic JSON message: every fact, and the closing fields when it closes."""
    return {
        "id": notice.dedup_key,  # the same on a retry: receivers may dedup
        "event": "closed" if notice.closing is not None else "escalation",
        "escalation_id": notice.escalation_id,
        "level": notice.level,
        **notice.facts,
        **(notice.closing or {}),
    }


@dataclass(frozen=True)
class WebhookChannel:
    """A generic JSON webhook: the event with every fact."""

    name: str
    url: str
    timeout: float
    type: str = "webhook"

    def payload(self, notice: Notice) -> dict[str, Any]:
        return _event(notice)

    async def send(self, session: aiohttp.ClientSession, payload: Mapping[str, Any]) -> None:
        await _post_json(session, self.url, payload, self.timeout)


@dataclass(frozen=True)
class SlackChannel(WebhookChannel):
    """A Slack incoming webhook (or a compatible one): `{"text": ...}`, one line a person reads."""

    type: str = "slack"

    def payload(self, notice: Notice) -> dict[str, Any]:
        facts, closing = notice.facts, notice.closing
        name = facts["labels"]["alertname"]
        if closing is not None:
            text = (
                f"{name} {closing['state']} by {closing['by']} ({closing['reason']}): "
                f"{facts['labels'].get('original_alertname', '')} — report: {facts['report_url']}"
            )
            return {"text": text}
        prefix = f"[{facts['severity']}] {name}"
        if notice.level:
            prefix += f" (level {notice.level}: not acknowledged yet)"
        return {"text": f"{prefix}: {facts['summary']}"}


@dataclass(frozen=True)
class NatsChannel:
    """Publishes the JSON message on a subject. One connection per message: escalations are rare,
    and a long-lived connection to the thing that may be broken would only add reconnect states."""

    name: str
    url: str
    subject: str
    timeout: float
    type: str = "nats"

    def payload(self, notice: Notice) -> dict[str, Any]:
        return _event(notice)

    async def send(self, session: aiohttp.ClientSession, payload: Mapping[str, Any]) -> None:
        errors: list[str] = []

        async def remember(exc: Exception) -> None:
            errors.append(str(exc) or type(exc).__name__)

        try:
            async with asyncio.timeout(self.timeout):
                nc = await nats.connect(
                    self.url,
                    connect_timeout=max(1, math.ceil(self.timeout)),
                    allow_reconnect=False,
                    max_reconnect_attempts=1,
                    reconnect_time_wait=0,
                    error_cb=remember,
                )
                try:
                    await nc.publish(self.subject, json.dumps(payload).encode())
                    await nc.flush(timeout=max(1, math.ceil(self.timeout)))
                finally:
                    await nc.close()
        except TimeoutError:
            raise DeliveryError(f"no answer within {self.timeout:g}s") from None
        except (OSError, nats.errors.Error) as exc:
            detail = "; ".join(errors) or str(exc) or type(exc).__name__
            raise DeliveryError(f"nats: {detail}") from None


def build_channels(settings: Settings, secrets: Secrets, clock: Clock) -> tuple[dict[str, Channel], dict[str, Retry]]:
    """The configured channels by name, and each one's retry policy."""
    escalation = settings.escalation
    channels: dict[str, Channel] = {}
    retries: dict[str, Retry] = {}
    for spec in escalation.channels:
        channels[spec.name] = _channel(spec, settings, secrets, clock)
        retries[spec.name] = Retry(spec.retries, spec.backoff, spec.max_backoff)
    return channels, retries


def _channel(spec: ChannelSettings, settings: Settings, secrets: Secrets, clock: Clock) -> Channel:
    url = secrets.channel_urls.get(spec.name) or spec.url
    if spec.type == "alertmanager":
        return AlertmanagerChannel(
            spec.name,
            (url.rstrip("/"),) if url else tuple(settings.alertmanagers()),
            spec.timeout,
            clock,
            settings.escalation.alertmanager.ends_after,
        )
    if spec.type == "nats":
        assert spec.subject is not None  # the settings refuse a nats channel without one
        return NatsChannel(spec.name, url or settings.nats_url, spec.subject, spec.timeout)
    assert url is not None  # load_secrets refuses a webhook channel without a URL
    if spec.type == "slack":
        return SlackChannel(spec.name, url, spec.timeout)
    return WebhookChannel(spec.name, url, spec.timeout)
