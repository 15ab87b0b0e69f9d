"""The reconciler against fake Alertmanagers (aiohttp apps on loopback ports) and a fake store."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from support.realprocs import free_port

from service.alerts.webhook import WebhookNotification, parse
from service.clock import FakeClock
from service.flow.reconciler import (
    GROUP_KEY,
    MAX_BACKOFF_S,
    RECEIVER,
    GettableAlert,
    PassResult,
    ReconcileConfig,
    Reconciler,
    notification,
)
from service.metrics import create_metrics
from service.settings import SettingsError, load_settings
from service.store import Occurrence, StoreError

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
Key = tuple[str, datetime]


class FakeAlertmanager:
    """Serves GET /api/v2/alerts from `alerts` (or answers `status`, or stalls `delay` seconds)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.alerts: list[dict[str, Any]] = []
        self.status = 200
        self.delay = 0.0
        self.requests: list[Mapping[str, str]] = []
        self._runner: web.AppRunner | None = None
        self._stopping = asyncio.Event()  # ends a stall at once when the test is over

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def add(self, fingerprint: str, starts_at: datetime = T0, state: str = "active", **labels: str) -> None:
        self.alerts.append(
            {
                "labels": {"alertname": "NatsServerDown", "instance": "n1", **labels},
                "annotations": {"summary": "down"},
                "startsAt": starts_at.isoformat().replace("+00:00", "Z"),
                "endsAt": (starts_at + timedelta(minutes=5)).isoformat().replace("+00:00", "Z"),
                "updatedAt": starts_at.isoformat().replace("+00:00", "Z"),
                "fingerprint": fingerprint,
                "generatorURL": "http://prometheus/graph",
                "receivers": [{"name": "remediator"}],
                "status": {"state": state, "silencedBy": [], "inhibitedBy": []},
            }
        )

    async def _list(self, request: web.Request) -> web.Response:
        self.requests.append(dict(request.query))
        if self.delay:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.delay)
        if self.status != 200:
            return web.json_response({"error": "broken"}, status=self.status)
        return web.json_response(self.alerts)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/api/v2/alerts", self._list)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        self._stopping.set()
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def ams() -> AsyncIterator[list[FakeAlertmanager]]:
    started = [FakeAlertmanager(), FakeAlertmanager()]
    for am in started:
        await am.start()
    yield started
    for am in started:
        await am.stop()


class FakeStore:
    """Occurrences by (fingerprint, startsAt); `deliver` applies a notification as the intake would
    (status moves forward only) and records it."""

    def __init__(self) -> None:
        self.occurrences: dict[Key, Occurrence] = {}
        self.deliveries: list[tuple[WebhookNotification, bytes, str]] = []
        self.fail = False

    def add(self, fingerprint: str, starts_at: datetime = T0, status: str = "firing", **labels: str) -> None:
        self.occurrences[(fingerprint, starts_at)] = Occurrence(
            id=len(self.occurrences) + 1,
            fingerprint=fingerprint,
            starts_at=starts_at,
            alertname="NatsServerDown",
            labels={"alertname": "NatsServerDown", "instance": "n1", **labels},
            annotations={"summary": "down"},
            generator_url="http://prometheus/graph",
            status=status,
            ends_at=None,
            receive_count=1,
        )

    async def occurrence_statuses(self, keys: Sequence[Key]) -> dict[Key, str]:
        if self.fail:
            raise StoreError("disk I/O error")
        return {key: self.occurrences[key].status for key in keys if key in self.occurrences}

    async def firing_occurrences(self, limit: int) -> list[Occurrence]:
        if self.fail:
            raise StoreError("disk I/O error")
        return [o for o in self.occurrences.values() if o.status == "firing"][:limit]

    async def deliver(self, notification: WebhookNotification, body: bytes, source: Literal["reconcile"]) -> object:
        self.deliveries.append((notification, body, source))
        for alert in notification.alerts:
            key = (alert.fingerprint, alert.startsAt)
            known = self.occurrences.get(key)
            if known is None:
                self.add(alert.fingerprint, alert.startsAt, alert.status, **alert.labels)
            elif known.status == "firing" and alert.status == "resolved":
                self.add(alert.fingerprint, alert.startsAt, "resolved", **alert.labels)
        return None

    def delivered(self) -> list[tuple[str, str]]:
        return [(a.fingerprint, a.status) for n, _, _ in self.deliveries for a in n.alerts]


def wants(status: str, labels: Mapping[str, str]) -> bool:
    return labels.get("team") != "other"


def reconciler(
    store: FakeStore, *urls: str, clock: FakeClock | None = None, timeout: float = 2.0, **kwargs: Any
) -> Reconciler:
    return Reconciler(
        store=store,
        wants=wants,
        deliver=store.deliver,
        clock=clock or FakeClock(current=T0 + timedelta(minutes=1)),
        config=ReconcileConfig(urls=urls, interval=5.0, idle_interval=30.0, timeout=timeout),
        **kwargs,
    )


async def one_pass(rec: Reconciler) -> PassResult:
    async with rec.session() as session:
        return await rec.reconcile(session)


async def test_a_new_alert_is_delivered_once_as_a_webhook_would_bring_it(ams: list[FakeAlertmanager]) -> None:
    am = ams[0]
    am.add("f1")
    store = FakeStore()
    rec = reconciler(store, am.url)

    result = await one_pass(rec)
    assert (result.ok, result.delivered_firing, result.delivered_resolved, result.busy) == (True, 1, 0, True)
    [(notification, body, source)] = store.deliveries
    assert source == "reconcile"
    assert (notification.version, notification.receiver, notification.groupKey) == ("4", RECEIVER, GROUP_KEY)
    assert (notification.status, notification.externalURL) == ("firing", am.url)
    [alert] = notification.alerts
    assert (alert.status, alert.fingerprint, alert.startsAt, alert.ends_at) == ("firing", "f1", T0, None)
    assert alert.labels == {"alertname": "NatsServerDown", "instance": "n1"}
    assert (alert.annotations, alert.generatorURL) == ({"summary": "down"}, "http://prometheus/graph")
    assert WebhookNotification.model_validate_json(body) == notification  # the body stored is its JSON
    assert am.requests[0] == {"active": "true", "silenced": "true", "inhibited": "true", "unprocessed": "true"}

    # Known now: a second pass delivers nothing, so no receive count or repeat grows per pass.
    again = await one_pass(rec)
    assert (again.ok, again.delivered_firing, again.delivered_resolved) == (True, 0, 0)
    assert len(store.deliveries) == 1


async def test_a_known_occurrence_firing_or_resolved_is_left_alone(ams: list[FakeAlertmanager]) -> None:
    am = ams[0]
    am.add("firing-known")
    am.add("resolved-known")  # a stale copy: the store resolved it already
    store = FakeStore()
    store.add("firing-known")
    store.add("resolved-known", status="resolved")
    result = await one_pass(reconciler(store, am.url))
    assert (result.ok, result.delivered_firing, result.delivered_resolved) == (True, 0, 0)
    assert store.deliveries == []


async def test_a_refire_with_a_new_starts_at_is_a_new_occurrence_and_the_old_one_resolves(
    ams: list[FakeAlertmanager],
) -> None:
    am = ams[0]
    am.add("f1", starts_at=T0 + timedelta(seconds=40))  # killed again before the group flushed
    store = FakeStore()
    store.add("f1", starts_at=T0)
    clock = FakeClock(current=T0 + timedelta(minutes=1))
    await one_pass(reconciler(store, am.url, clock=clock))
    assert sorted(store.delivered()) == [("f1", "firing"), ("f1", "resolved")]
    assert store.occurrences[("f1", T0)].status == "resolved"
    assert store.occurrences[("f1", T0 + timedelta(seconds=40))].status == "firing"


async def test_a_firing_occurrence_no_alertmanager_lists_is_resolved_now(ams: list[FakeAlertmanager]) -> None:
    store = FakeStore()
    store.add("gone", region="eu")
    store.add("still")
    ams[0].add("still")
    ams[1].add("still", state="suppressed")  # silenced in one, listed: not gone
    clock = FakeClock(current=T0 + timedelta(minutes=3))
    result = await one_pass(reconciler(store, ams[0].url, ams[1].url, clock=clock))
    assert (result.ok, result.delivered_firing, result.delivered_resolved) == (True, 0, 1)
    [(notification, _, source)] = store.deliveries
    [alert] = notification.alerts
    assert (source, notification.status, notification.externalURL) == ("reconcile", "resolved", ams[0].url)
    assert (alert.fingerprint, alert.status, alert.startsAt, alert.ends_at) == ("gone", "resolved", T0, clock.now())
    assert alert.labels["region"] == "eu"
    assert store.occurrences[("still", T0)].status == "firing"
    assert (await one_pass(reconciler(store, ams[0].url, clock=clock))).delivered_resolved == 0


async def test_nothing_resolves_unless_every_alertmanager_answered(ams: list[FakeAlertmanager]) -> None:
    store = FakeStore()
    store.add("gone")
    ams[0].add("new")
    ams[1].status = 503
    result = await one_pass(reconciler(store, ams[0].url, ams[1].url))
    assert (result.ok, result.answered, result.failed) == (False, (ams[0].url,), (ams[1].url,))
    # What the one that answered lists is still delivered; nothing is resolved on a partial view.
    assert store.delivered() == [("new", "firing")]
    assert store.occurrences[("gone", T0)].status == "firing"


async def test_unwanted_suppressed_and_unprocessed_alerts_are_not_delivered(ams: list[FakeAlertmanager]) -> None:
    am = ams[0]
    am.add("other-team", team="other")  # no rule wants it
    am.add("silenced", state="suppressed")  # no webhook would bring it either (silenced or inhibited)
    am.add("unprocessed", state="unprocessed")  # not yet checked for inhibition: next pass
    store = FakeStore()
    result = await one_pass(reconciler(store, am.url))
    assert (result.ok, result.delivered_firing, result.busy) == (True, 0, False)
    assert store.deliveries == []


async def test_an_ha_pair_listing_the_same_alert_delivers_it_once(ams: list[FakeAlertmanager]) -> None:
    for am in ams:
        am.add("f1")
    store = FakeStore()
    await one_pass(reconciler(store, ams[0].url, ams[1].url))
    assert store.delivered() == [("f1", "firing")]


async def test_a_failing_alertmanager_is_backed_off_doubling_up_to_five_minutes(ams: list[FakeAlertmanager]) -> None:
    am = ams[0]
    am.status = 500
    clock = FakeClock()
    metrics = create_metrics()
    rec = reconciler(FakeStore(), am.url, ams[1].url, clock=clock, observer=metrics.reconcile)
    delays = []
    for _ in range(9):
        result = await one_pass(rec)
        assert result.failed == (am.url,)
        delays.append(rec.backing_off(am.url))
        # While it backs off it is not asked at all; the other one still is, every pass.
        asked = len(am.requests)
        assert (await one_pass(rec)).failed == (am.url,)
        assert len(am.requests) == asked
        clock.advance(delays[-1])
    assert delays == [5, 10, 20, 40, 80, 160, 300, 300, 300]
    assert MAX_BACKOFF_S == 300
    assert len(ams[1].requests) == 18
    text = generate_latest(metrics.registry).decode()
    assert f'remediator_alertmanager_up{{url="{am.url}"}} 0.0' in text
    assert f'remediator_alertmanager_up{{url="{ams[1].url}"}} 1.0' in text
    assert 'remediator_reconcile_passes_total{result="error"} 18.0' in text
    assert 'remediator_reconcile_passes_total{result="ok"} 0.0' in text

    am.status = 200  # back: asked again once its back-off passed, and the back-off forgotten
    result = await one_pass(rec)
    assert (result.ok, rec.backing_off(am.url)) == (True, 0)
    text = generate_latest(metrics.registry).decode()
    assert f'remediator_alertmanager_up{{url="{am.url}"}} 1.0' in text
    assert 'remediator_reconcile_passes_total{result="ok"} 1.0' in text
    [family] = [f for f in text_string_to_metric_families(text) if f.name.endswith("last_success_timestamp_seconds")]
    assert family.samples[0].value == clock.now().timestamp()


async def test_every_request_has_a_timeout_and_garbage_is_a_failure(ams: list[FakeAlertmanager]) -> None:
    ams[0].delay = 5.0
    store = FakeStore()
    store.add("gone")
    rec = reconciler(store, ams[0].url, timeout=0.2)
    started = asyncio.get_running_loop().time()
    result = await one_pass(rec)
    assert asyncio.get_running_loop().time() - started < 2.0
    assert (result.ok, result.failed, result.delivered_resolved) == (False, (ams[0].url,), 0)

    ams[1].alerts = {"not": "a list"}  # type: ignore[assignment]
    result = await one_pass(reconciler(store, ams[1].url))
    assert (result.ok, result.delivered_resolved) == (False, 0)


async def test_an_unreachable_alertmanager_is_a_failed_pass_not_an_exception() -> None:
    store = FakeStore()
    store.add("gone")
    result = await one_pass(reconciler(store, f"http://127.0.0.1:{free_port()}"))
    assert (result.ok, result.delivered_resolved) == (False, 0)


async def test_a_store_that_cannot_answer_fails_the_pass_and_the_next_one_works(ams: list[FakeAlertmanager]) -> None:
    ams[0].add("f1")
    store = FakeStore()
    store.fail = True
    rec = reconciler(store, ams[0].url)
    assert (await one_pass(rec)).ok is False
    store.fail = False
    assert (await one_pass(rec)).delivered_firing == 1


async def test_passes_come_every_interval_while_a_wanted_alert_fires_else_every_idle_interval(
    ams: list[FakeAlertmanager],
) -> None:
    store = FakeStore()
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        if len(slept) == 1:
            ams[0].add("f1")
        elif len(slept) == 2:
            ams[0].alerts = []
        elif len(slept) == 4:
            raise asyncio.CancelledError

    rec = reconciler(store, ams[0].url, sleep=sleep)
    with pytest.raises(asyncio.CancelledError):
        await rec.run()
    # Idle; f1 fires (delivered: busy); it is gone (resolved this pass, which still counts as busy:
    # its run may be open); idle again.
    assert slept == [30.0, 5.0, 5.0, 30.0]
    assert store.delivered() == [("f1", "firing"), ("f1", "resolved")]


async def test_the_start_pass_is_bounded(ams: list[FakeAlertmanager]) -> None:
    ams[0].delay = 5.0
    rec = Reconciler(
        store=FakeStore(),
        wants=wants,
        deliver=FakeStore().deliver,
        clock=FakeClock(),
        config=ReconcileConfig(urls=(ams[0].url,), timeout=10.0, start_timeout=0.2),
    )
    started = asyncio.get_running_loop().time()
    assert await rec.run_once() is None
    assert asyncio.get_running_loop().time() - started < 2.0


def test_the_body_delivered_is_webhook_json_an_intake_accepts() -> None:
    alert = GettableAlert.model_validate(
        {
            "labels": {"alertname": "X"},
            "startsAt": "2026-01-01T12:00:00.123456789Z",  # Alertmanager's nanoseconds
            "endsAt": "2026-01-01T12:05:00Z",
            "fingerprint": "abc",
            "status": {"state": "active"},
        }
    )
    built, body = notification([alert.as_firing()], "http://am:9093")
    assert parse(body) == built
    assert json.loads(body)["alerts"][0]["startsAt"].startswith("2026-01-01T12:00:00.123456")


async def test_a_session_is_closed_after_run_is_cancelled(ams: list[FakeAlertmanager]) -> None:
    rec = reconciler(FakeStore(), ams[0].url)
    sessions: list[aiohttp.ClientSession] = []
    make = rec.session

    def session() -> aiohttp.ClientSession:
        sessions.append(make())
        return sessions[-1]

    rec.session = session  # type: ignore[method-assign]
    task = asyncio.create_task(rec.run())
    await asyncio.sleep(0.2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert [s.closed for s in sessions] == [True]


def test_settings_defaults_durations_urls_and_overrides(tmp_path: Path) -> None:
    defaults = load_settings(None, env={})
    r = defaults.reconcile
    assert (r.enabled, r.interval, r.idle_interval, r.timeout, r.start_timeout) == (True, 5.0, 30.0, 5.0, 10.0)
    assert defaults.alertmanagers() == ["http://127.0.0.1:9093"]

    path = tmp_path / "remediator.yaml"
    path.write_text(
        "alertmanager_urls: [http://am1:9093/, http://am2:9093]\n"
        "reconcile: {interval: 2s, idle_interval: 1m, timeout: 500ms}\n"
    )
    settings = load_settings(path, env={"REMEDIATOR_RECONCILE__START_TIMEOUT": "3s"})
    assert settings.alertmanagers() == ["http://am1:9093", "http://am2:9093"]
    r = settings.reconcile
    assert (r.interval, r.idle_interval, r.timeout, r.start_timeout) == (2.0, 60.0, 0.5, 3.0)
    env = {"REMEDIATOR_ALERTMANAGER_URLS": "http://a:9093,http://b:9093"}
    assert load_settings(None, env=env).alertmanagers() == ["http://a:9093", "http://b:9093"]

    for bad, message in [
        ("alertmanager_urls: [am:9093]", "must be an http:// or https:// URL"),
        ("alertmanager_urls: [http://a, http://a/]", "each Alertmanager must be listed once"),
        ("reconcile: {interval: 1m, idle_interval: 30s}", "idle_interval must be at least interval"),
        ("reconcile: {timeout: 0s}", "greater than 0"),
    ]:
        path.write_text(bad + "\n")
        with pytest.raises(SettingsError) as caught:
            load_settings(path, env={})
        assert message in str(caught.value), bad


async def test_alertmanagers_millisecond_times_match_an_occurrence_stored_finer(ams: list[FakeAlertmanager]) -> None:
    # Its API gives startsAt to the millisecond; its webhook gave the nanoseconds the alert came with.
    fine = T0 + timedelta(microseconds=45363)
    ams[0].add("f1", starts_at=T0 + timedelta(microseconds=45000))
    store = FakeStore()
    store.add("f1", starts_at=fine)
    result = await one_pass(reconciler(store, ams[0].url))
    assert (result.ok, result.delivered_firing, result.delivered_resolved) == (True, 0, 0)
