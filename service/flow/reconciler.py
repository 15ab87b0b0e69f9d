"""Reconciliation: Alertmanager's active alerts read back, so no change goes unseen.

Webhooks are the fast path, but Alertmanager does not deliver every change: an alert that resolved
and fired again between two flushes of its group is a new occurrence no notification announces until
`repeat_interval`; alerts sent while the service was down are lost once Alertmanager's retries end;
a silenced alert that resolves sends no resolved notification. So, level-triggered, each pass reads
`GET /api/v2/alerts` from every configured Alertmanager and delivers what the store does not know
through the same intake path as a webhook (`source="reconcile"` on the occurrence):

- an alert a rule wants, which Alertmanager would notify (state `active`: not silenced, inhibited or
  still unprocessed), and whose occurrence (fingerprint, startsAt) the store does not know, is
  delivered firing: its decision starts as if a webhook had brought it;
- an occurrence the store has as firing that no Alertmanager lists any more (in any state) is
  delivered resolved, endsAt now — only after a pass every configured Alertmanager answered, so one
  that is down or slow never resolves anything;
- an alert the store already has, firing or resolved, is left alone: nothing is delivered, so no
  receive count or repeat grows with every pass (and a stale firing never re-opens a resolved
  occurrence: the store moves status forward only).

Passes come every `interval` while a rule-wanted alert is firing (listed by Alertmanager or firing in
the store), every `idle_interval` otherwise. An Alertmanager that fails is skipped for a back-off
that doubles with each failure (from `interval`, at most 5 minutes); the others are still read.
Nothing here is on the webhook's path: whatever the reconciler does, webhooks keep working.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol

import aiohttp
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from service.alerts.webhook import AlertTime, WebhookAlert, WebhookNotification
from service.clock import Clock
from service.errors import RemediatorError
from service.store import Occurrence, ReconcileStore, StoreError

log = logging.getLogger("remediator.reconciler")

MAX_BACKOFF_S = 300.0
RECEIVER = "remediator-reconciler"
GROUP_KEY = "reconcile"
ALERTS_PATH = "/api/v2/alerts"
ALERTS_QUERY = {"active": "true", "silenced": "true", "inhibited": "true", "unprocessed": "true"}
_FIRING_LIMIT = 10_000  # firing occurrences read back per pass (more is a storm: logged)
_MAX_RESPONSE_BYTES = 64 * 1024 * 1024  # one Alertmanager's answer, at most
_READ_CHUNK = 256 * 1024
_ALERTS_PER_DELIVERY = 500  # one delivery (one notification, one commit) holds at most this many

OccurrenceKey = tuple[str, datetime]


class AlertDelivery(Protocol):
    """The intake path after validation (service.web.intake.deliver, wired by the app): wants ->
    record -> metrics -> hand-over to the dispatcher. Raises StoreError when the store cannot commit."""

    async def __call__(
        self, notification: WebhookNotification, body: bytes, source: Literal["reconcile"]
    ) -> object: ...


class ReconcileObserver(Protocol):
    """What the passes are counted with (service.metrics.ReconcileMetrics is one)."""

    def alertmanager_answered(self, url: str, up: bool) -> None: ...

    def pass_finished(self, ok: bool, at: datetime) -> None: ...


class _AlertStatus(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    state: str = ""  # active | suppressed | unprocessed


class GettableAlert(BaseModel):
    """One alert of Alertmanager's `GET /api/v2/alerts` (the fields the reconciler uses)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    labels: dict[str, str]
    annotations: dict[str, str] = Field(default_factory=dict)
    startsAt: AlertTime
    endsAt: AlertTime | None = None
    fingerprint: str = Field(min_length=1, max_length=128)
    generatorURL: str = ""
    status: _AlertStatus = Field(default_factory=_AlertStatus)

    @property
    def key(self) -> OccurrenceKey:
        return (self.fingerprint, self.startsAt)

    @property
    def ms_key(self) -> OccurrenceKey:
        return ms_key(self.fingerprint, self.startsAt)

    @property
    def notifiable(self) -> bool:
        """What Alertmanager would send a webhook for: neither silenced nor inhibited (suppressed),
        nor waiting to be checked for that (unprocessed)."""
        return self.status.state == "active"

    def as_firing(self) -> WebhookAlert:
        return WebhookAlert(
            status="firing",
            labels=self.labels,
            annotations=self.annotations,
            startsAt=self.startsAt,
            generatorURL=self.generatorURL,
            fingerprint=self.fingerprint,
        )


class AlertmanagerError(RemediatorError):
    """One Alertmanager could not be read this pass (unreachable, timed out, an error answer,
    an answer that is not the alert list)."""


def ms_key(fingerprint: str, starts_at: datetime) -> OccurrenceKey:
    """(fingerprint, startsAt to the millisecond): Alertmanager's API gives times to the millisecond,
    its webhook to the nanosecond; Prometheus sends milliseconds, so the two agree for its alerts,
    but an alert posted with finer times must still be recognised as the occurrence it is."""
    return (fingerprint, starts_at.replace(microsecond=starts_at.microsecond // 1000 * 1000))


def parse_alerts(payload: Any, url: str) -> list[GettableAlert]:
    """The alert list as Alertmanager gives it; an entry that is not an alert is logged and skipped,
    an answer that is not a list is an error (a proxy's page, a wrong URL)."""
    if not isinstance(payload, list):
        raise AlertmanagerError(f"{url}{ALERTS_PATH} did not answer a list of alerts")
    alerts = []
    for item in payload:
        try:
            alerts.append(GettableAlert.model_validate(item))
        except ValidationError as exc:
            log.warning(
                "alert from Alertmanager ignored: not a valid alert",
                extra={"alertmanager": url, "error": str(exc.errors(include_url=False)[:1])},
            )
    return alerts


def resolved_alert(occurrence: Occurrence, at: datetime) -> WebhookAlert:
    return WebhookAlert(
        status="resolved",
        labels=occurrence.labels,
        annotations=occurrence.annotations,
        startsAt=occurrence.starts_at,
        endsAt=max(at, occurrence.starts_at),
        generatorURL=occurrence.generator_url,
        fingerprint=occurrence.fingerprint,
    )


def notification(alerts: Sequence[WebhookAlert], external_url: str) -> tuple[WebhookNotification, bytes]:
    """A webhook v4 notification as the intake stores it, and its body (the JSON stored)."""
    built = WebhookNotification(
        version="4",
        groupKey=GROUP_KEY,
        status="firing" if any(a.status == "firing" for a in alerts) else "resolved",
        receiver=RECEIVER,
        externalURL=external_url,
        alerts=list(alerts),
    )
    return built, built.model_dump_json(exclude_none=True).encode()


@dataclass(frozen=True)
class ReconcileConfig:
    urls: tuple[str, ...]
    interval: float = 5.0
    idle_interval: float = 30.0
    timeout: float = 5.0  # each request
    start_timeout: float = 10.0  # the whole pass before the service serves


@dataclass(frozen=True)
class PassResult:
    ok: bool  # every configured Alertmanager answered and every delivery committed
    answered: tuple[str, ...]
    failed: tuple[str, ...]  # tried and failed, or skipped while backing off
    delivered_firing: int
    delivered_resolved: int
    busy: bool  # a rule-wanted alert is firing: the next pass comes after `interval`


@dataclass
class _Backoff:
    failures: int = 0
    retry_at: float = 0.0  # monotonic


@dataclass
class Reconciler:
    store: ReconcileStore
    wants: Callable[[str, Mapping[str, str]], bool]  # does a rule want an alert (status, labels)?
    deliver: AlertDelivery
    clock: Clock
    config: ReconcileConfig
    observer: ReconcileObserver | None = None
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    _backoff: dict[str, _Backoff] = field(default_factory=dict, init=False)

    def session(self) -> aiohttp.ClientSession:
        """The one session a reconciler's requests share (the caller closes it)."""
        return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.config.timeout))

    def backing_off(self, url: str) -> float:
        """Seconds until `url` is tried again (0: it is tried on the next pass)."""
        state = self._backoff.get(url)
        return 0.0 if state is None else max(0.0, state.retry_at - self.clock.monotonic())

    async def run(self, last: PassResult | None = None) -> None:
        """Pass after pass until cancelled, the first one after the wait `last` (the start-up pass)
        calls for; a pass never raises (its failures are logged and counted)."""
        async with self.session() as session:
            result = last
            while True:
                if result is not None:
                    await self.sleep(self.config.interval if result.busy else self.config.idle_interval)
                result = await self.reconcile(session)

    async def run_once(self) -> PassResult | None:
        """One pass bounded by `start_timeout` (the one before the service serves); None if it
        did not finish in time (what it delivered until then stays delivered)."""
        limit = self.config.start_timeout
        async with self.session() as session:
            try:
                return await asyncio.wait_for(self.reconcile(session), limit)
            except TimeoutError:
                log.warning("start-up reconciliation did not finish in time", extra={"timeout_s": limit})
                if self.observer is not None:
                    self.observer.pass_finished(False, self.clock.now())
                return None

    async def reconcile(self, session: aiohttp.ClientSession) -> PassResult:
        """One pass: read every Alertmanager, deliver what the store does not know, resolve what
        none lists any more."""
        try:
            result = await self._pass(session)
        except StoreError as exc:
            log.error("reconciliation pass failed: the store", extra={"error": str(exc)})
            result = PassResult(False, (), (), 0, 0, busy=True)
        except Exception:  # a bug must not end reconciliation for good: logged, tried next pass
            log.exception("reconciliation pass failed")
            result = PassResult(False, (), (), 0, 0, busy=True)
        if self.observer is not None:
            self.observer.pass_finished(result.ok, self.clock.now())
        if result.delivered_firing or result.delivered_resolved:
            log.info(
                "reconciled with Alertmanager",
                extra={"firing": result.delivered_firing, "resolved": result.delivered_resolved},
            )
        return result

    async def _pass(self, session: aiohttp.ClientSession) -> PassResult:
        # The store's firing occurrences are read before Alertmanager is asked: one stored by a
        # webhook after the read is not in this pass's list, so it cannot be resolved by mistake.
        firing = await self.store.firing_occurrences(_FIRING_LIMIT)
        if len(firing) >= _FIRING_LIMIT:
            log.warning("more firing occurrences than one pass reads", extra={"limit": _FIRING_LIMIT})
        urls = self.config.urls
        answers = await asyncio.gather(*(self._read(session, url) for url in urls))
        listed: dict[OccurrenceKey, tuple[str, GettableAlert]] = {}  # by ms_key
        answered, failed = [], []
        for url, alerts in zip(urls, answers, strict=True):
            if alerts is None:
                failed.append(url)
                continue
            answered.append(url)
            for alert in alerts:
                listed.setdefault(alert.ms_key, (url, alert))

        new = [
            (url, alert) for url, alert in listed.values() if alert.notifiable and self.wants("firing", alert.labels)
        ]
        busy = bool(new) or any(self.wants("firing", o.labels) for o in firing)
        firing_keys = {ms_key(o.fingerprint, o.starts_at) for o in firing}
        new = [(url, alert) for url, alert in new if alert.ms_key not in firing_keys]
        known = await self.store.occurrence_statuses([alert.key for _, alert in new]) if new else {}
        by_url: dict[str, list[WebhookAlert]] = {}
        for url, alert in new:
            if alert.key not in known:
                by_url.setdefault(url, []).append(alert.as_firing())
        delivered_firing = 0
        for url, fresh in by_url.items():
            delivered_firing += await self._deliver(fresh, url)

        delivered_resolved = 0
        if not failed and urls:
            now = self.clock.now()
            gone = [resolved_alert(o, now) for o in firing if ms_key(o.fingerprint, o.starts_at) not in listed]
            delivered_resolved = await self._deliver(gone, urls[0])
        return PassResult(not failed, tuple(answered), tuple(failed), delivered_firing, delivered_resolved, busy)

    async def _deliver(self, alerts: Sequence[WebhookAlert], external_url: str) -> int:
        for start in range(0, len(alerts), _ALERTS_PER_DELIVERY):
            built, body = notification(alerts[start : start + _ALERTS_PER_DELIVERY], external_url)
            await self.deliver(built, body, "reconcile")
        return len(alerts)

    async def _read(self, session: aiohttp.ClientSession, url: str) -> list[GettableAlert] | None:
        """The alerts one Alertmanager lists, or None when it failed (or is still backing off)."""
        if self.backing_off(url) > 0:
            return None
        try:
            alerts = await asyncio.wait_for(self._get(session, url), self.config.timeout)
        except (aiohttp.ClientError, TimeoutError, ValueError, AlertmanagerError) as exc:
            state = self._backoff.setdefault(url, _Backoff())
            state.failures += 1
            delay = min(MAX_BACKOFF_S, self.config.interval * 2 ** (state.failures - 1))
            state.retry_at = self.clock.monotonic() + delay
            log.warning(
                "cannot read Alertmanager's alerts; backing off",
                extra={"alertmanager": url, "error": str(exc) or type(exc).__name__, "retry_in_s": delay},
            )
            if self.observer is not None:
                self.observer.alertmanager_answered(url, False)
            return None
        if self._backoff.pop(url, None) is not None:
            log.info("Alertmanager answers again", extra={"alertmanager": url})
        if self.observer is not None:
            self.observer.alertmanager_answered(url, True)
        return alerts

    async def _get(self, session: aiohttp.ClientSession, url: str) -> list[GettableAlert]:
        async with session.get(
            url + ALERTS_PATH, params=ALERTS_QUERY, timeout=aiohttp.ClientTimeout(total=self.config.timeout)
        ) as response:
            if response.status != 200:
                raise AlertmanagerError(f"{url}{ALERTS_PATH} answered {response.status}")
            if response.content_length is not None and response.content_length > _MAX_RESPONSE_BYTES:
                raise AlertmanagerError(f"{url}{ALERTS_PATH}: answer larger than {_MAX_RESPONSE_BYTES} bytes")
            chunks, size = [], 0
            while chunk := await response.content.read(_READ_CHUNK):
                size += len(chunk)
                if size > _MAX_RESPONSE_BYTES:
                    raise AlertmanagerError(f"{url}{ALERTS_PATH}: answer larger than {_MAX_RESPONSE_BYTES} bytes")
                chunks.append(chunk)
        return parse_alerts(json.loads(b"".join(chunks)), url)
