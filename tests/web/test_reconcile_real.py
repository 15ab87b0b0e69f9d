"""Reconciliation against a real Alertmanager: an alert no webhook brought is decided at start-up
(source "reconcile"), and resolved once Alertmanager no longer lists it."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families
from support.app_client import AppClient
from support.flow import QUICK_PLAYBOOK, alert_body, executions, poll, quick_rules, write_config
from support.realprocs import AlertmanagerServer, free_port

from service.settings import Settings
from service.web.app import RECONCILER, RUNTIME

# Alertmanager sends its notifications nowhere: only the reconciler brings the alert in.
AM_CONFIG = """
route:
  receiver: blackhole
receivers:
  - name: blackhole
"""
LABELS = {"alertname": "NatsJetStreamUnhealthy", "instance": "node-7", "severity": "critical"}


def now_text() -> str:
    return datetime.now(UTC).isoformat()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_an_alert_only_alertmanager_holds_is_reconciled_at_start_then_resolved(
    alertmanager_server: Callable[[str], AlertmanagerServer], tmp_path: Path, app_client: AppClient
) -> None:
    am = alertmanager_server(AM_CONFIG)
    starts_at = datetime.now(UTC) - timedelta(seconds=30)  # with microseconds, as Prometheus sends
    alert: dict[str, Any] = {
        "labels": LABELS,
        "annotations": {"summary": "JetStream unhealthy on node-7"},
        "startsAt": starts_at.isoformat(),
        "generatorURL": "http://prometheus.example/graph",
    }
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        async with session.post(f"{am.url}/api/v2/alerts", json=[alert]) as response:
            assert response.status == 200

        async def listed_active(count: int = 1) -> list[dict[str, Any]] | None:
            async with session.get(f"{am.url}/api/v2/alerts") as response:
                alerts: list[dict[str, Any]] = await response.json()
            active = len(alerts) == count and all(a["status"]["state"] == "active" for a in alerts)
            return alerts if active else None

        [held] = await poll(listed_active, what="Alertmanager lists the alert as active")

        config = write_config(tmp_path, quick_rules(100), {"quick": QUICK_PLAYBOOK})
        # Long intervals: the start-up pass and the passes this test runs are the only ones.
        config.update(alertmanager_url=am.url, reconcile={"interval": "1h", "idle_interval": "1h"})
        client = await app_client(Settings.model_validate(config))
        store = client.app[RUNTIME].store

        # Decided before the service served: stored with source "reconcile", and a run made.
        [occurrence] = await store.firing_occurrences(10)
        # Alertmanager's API gives times to the millisecond (its webhook to the nanosecond).
        in_ms = starts_at.replace(microsecond=starts_at.microsecond // 1000 * 1000)
        assert (occurrence.fingerprint, occurrence.starts_at) == (held["fingerprint"], in_ms)
        assert (occurrence.source, occurrence.labels, occurrence.receive_count) == ("reconcile", LABELS, 1)
        [run] = await poll(lambda: executions(client), what="the reconciled alert's run")
        assert run["rule"] == "quick-fix"

        metrics = samples(await (await client.get("/metrics")).text())
        received = "remediator_alerts_received_total"
        assert metrics[(received, (("source", "reconcile"), ("status", "firing")))] == 1
        assert metrics[("remediator_alertmanager_up", (("url", am.url),))] == 1
        assert metrics[("remediator_reconcile_passes_total", (("result", "ok"),))] == 1
        assert metrics[("remediator_reconcile_last_success_timestamp_seconds", ())] > 0

        reconciler = client.app[RECONCILER]
        async with reconciler.session() as am_session:
            # Still listed, already known: nothing delivered, the receive count does not grow.
            again = await reconciler.reconcile(am_session)
            assert (again.ok, again.delivered_firing, again.delivered_resolved) == (True, 0, 0)
            [occurrence] = await store.firing_occurrences(10)
            assert occurrence.receive_count == 1

            # One a webhook brought with finer times than the API gives is still the same occurrence.
            other = {**alert, "labels": {**LABELS, "instance": "node-8"}}
            async with session.post(f"{am.url}/api/v2/alerts", json=[other]) as response:
                assert response.status == 200
            listed = await poll(lambda: listed_active(2), what="Alertmanager lists the second alert")
            [fingerprint] = [a["fingerprint"] for a in listed if a["labels"]["instance"] == "node-8"]
            hook = alert_body(fingerprint, **other["labels"])
            hook["alerts"][0]["startsAt"] = starts_at.isoformat()
            assert (await client.post("/hooks/alertmanager", json=hook)).status == 200
            result = await reconciler.reconcile(am_session)
            assert (result.ok, result.delivered_firing, result.delivered_resolved) == (True, 0, 0)
            by_source = {o.labels["instance"]: o.source for o in await store.firing_occurrences(10)}
            assert by_source == {"node-7": "reconcile", "node-8": "webhook"}
            async with session.post(f"{am.url}/api/v2/alerts", json=[{**other, "endsAt": now_text()}]) as response:
                assert response.status == 200

            # Resolved in Alertmanager (no webhook tells us): the next pass resolves it.
            ended = {**alert, "endsAt": now_text()}
            async with session.post(f"{am.url}/api/v2/alerts", json=[ended]) as response:
                assert response.status == 200

            async def gone() -> bool:
                async with session.get(f"{am.url}/api/v2/alerts") as response:
                    return bool(await response.json() == [])

            await poll(gone, what="Alertmanager no longer lists the alert")
            result = await reconciler.reconcile(am_session)
            assert (result.ok, result.delivered_firing, result.delivered_resolved) == (True, 0, 2)
        assert await store.firing_occurrences(10) == []
        key = (occurrence.fingerprint, occurrence.starts_at)
        assert await store.occurrence_statuses([key]) == {key: "resolved"}
        metrics = samples(await (await client.get("/metrics")).text())
        assert metrics[(received, (("source", "reconcile"), ("status", "resolved")))] == 2
        assert metrics[(received, (("source", "webhook"), ("status", "firing")))] == 1


async def test_an_unreachable_alertmanager_does_not_stop_the_start_and_webhooks_work(
    tmp_path: Path, app_client: AppClient
) -> None:
    config = write_config(tmp_path, quick_rules(100), {"quick": QUICK_PLAYBOOK})
    down = f"http://127.0.0.1:{free_port()}"
    config.update(alertmanager_url=down, reconcile={"interval": "1h", "idle_interval": "1h", "timeout": "1s"})
    client = await app_client(Settings.model_validate(config))
    assert (await client.get("/-/ready")).status == 200
    assert (await client.post("/hooks/alertmanager", json=alert_body("w1", instance="node-1"))).status == 200
    [occurrence] = await client.app[RUNTIME].store.firing_occurrences(10)
    assert occurrence.source == "webhook"
    metrics = samples(await (await client.get("/metrics")).text())
    assert metrics[("remediator_alertmanager_up", (("url", down),))] == 0
    assert metrics[("remediator_reconcile_passes_total", (("result", "error"),))] == 1
    assert metrics[("remediator_alerts_received_total", (("source", "webhook"), ("status", "firing")))] == 1


async def test_an_alert_resolved_while_silenced_is_resolved_by_reconciliation(
    alertmanager_server: Callable[[str], AlertmanagerServer], tmp_path: Path, app_client: AppClient
) -> None:
    """Alertmanager sends no resolved notification for a silenced alert: while it is silenced and
    still firing the occurrence stays firing; once it is gone, a pass resolves it."""
    am = alertmanager_server(AM_CONFIG)
    alert: dict[str, Any] = {"labels": LABELS, "startsAt": (datetime.now(UTC) - timedelta(seconds=30)).isoformat()}
    silence = {
        "matchers": [{"name": "alertname", "value": LABELS["alertname"], "isRegex": False, "isEqual": True}],
        "startsAt": now_text(),
        "endsAt": (datetime.now(UTC) + timedelta(hours=1)).isoformat(),
        "createdBy": "test",
        "comment": "maintenance",
    }
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:

        async def listed(state: str) -> bool:
            async with session.get(f"{am.url}/api/v2/alerts") as response:
                alerts = await response.json()
            return len(alerts) == 1 and alerts[0]["status"]["state"] == state

        async with session.post(f"{am.url}/api/v2/alerts", json=[alert]) as response:
            assert response.status == 200
        await poll(lambda: listed("active"), what="Alertmanager lists the alert as active")
        config = write_config(tmp_path, quick_rules(100), {"quick": QUICK_PLAYBOOK})
        config.update(alertmanager_url=am.url, reconcile={"interval": "1h", "idle_interval": "1h"})
        client = await app_client(Settings.model_validate(config))
        store = client.app[RUNTIME].store
        [occurrence] = await store.firing_occurrences(10)
        key = (occurrence.fingerprint, occurrence.starts_at)

        async with session.post(f"{am.url}/api/v2/silences", json=silence) as response:
            assert response.status == 200
        await poll(lambda: listed("suppressed"), what="Alertmanager lists the alert as silenced")
        reconciler = client.app[RECONCILER]
        async with reconciler.session() as am_session:
            result = await reconciler.reconcile(am_session)
            assert (result.ok, result.delivered_resolved) == (True, 0)  # silenced is not gone
            assert await store.occurrence_statuses([key]) == {key: "firing"}

            async with session.post(f"{am.url}/api/v2/alerts", json=[{**alert, "endsAt": now_text()}]) as response:
                assert response.status == 200

            async def gone() -> bool:
                async with session.get(f"{am.url}/api/v2/alerts") as response:
                    return bool(await response.json() == [])

            await poll(gone, what="Alertmanager no longer lists the alert")
            result = await reconciler.reconcile(am_session)
            assert (result.ok, result.delivered_resolved) == (True, 1)
        assert await store.occurrence_statuses([key]) == {key: "resolved"}


async def test_a_stale_firing_copy_after_the_resolve_leaves_the_occurrence_resolved(
    tmp_path: Path, app_client: AppClient
) -> None:
    """An Alertmanager HA pair: the second replica's firing copy arrives after the first one's
    resolve. The occurrence stays resolved and no second run is decided."""
    config = write_config(tmp_path, quick_rules(100), {"quick": QUICK_PLAYBOOK})
    config.update(reconcile={"enabled": False})
    client = await app_client(Settings.model_validate(config))
    firing, resolved = alert_body("aaaa00000000000a"), alert_body("aaaa00000000000a", status="resolved")
    assert (await client.post("/hooks/alertmanager", json=firing)).status == 200
    [run] = await poll(lambda: executions(client), what="the first run")
    assert (await client.post("/hooks/alertmanager", json=resolved)).status == 200
    assert (await client.post("/hooks/alertmanager", json=firing)).status == 200  # the stale copy
    store = client.app[RUNTIME].store
    starts_at = datetime.fromisoformat(firing["alerts"][0]["startsAt"].replace("Z", "+00:00"))
    key = ("aaaa00000000000a", starts_at)
    assert await store.occurrence_statuses([key]) == {key: "resolved"}
    assert await store.firing_occurrences(10) == []
    assert [r["id"] for r in await executions(client)] == [run["id"]]
