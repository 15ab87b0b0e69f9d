"""Escalation: a real Alertmanager pages and is resolved; the outbox delivers exactly once per level
per channel, after the channel comes back and across restarts; levels stop at an acknowledgement."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import nats
import pytest
from support.escalation import (  # noqa: F401 (fixtures)
    FAILING,
    AppFactory,
    Receiver,
    apps_fixture,
    auth,
    only_execution,
    receiver_fixture,
    settings_for,
    state_is,
    store,
)
from support.flow import alert_body, poll
from support.realprocs import AlertmanagerServer, NatsServer

from service.settings import Settings, SettingsError, load_secrets, load_settings
from service.web.runtime import RUNTIME

AM_CONFIG = """
route:
  receiver: blackhole
receivers:
  - name: blackhole
"""


async def am_alerts(am_url: str, execution_id: str) -> list[dict[str, Any]]:
    """The alerts Alertmanager's API lists as active for this execution."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            f"{am_url}/api/v2/alerts",
            params={"filter": f'execution_id="{execution_id}"', "active": "true"},
            timeout=aiohttp.ClientTimeout(total=5),
        ) as resp,
    ):
        assert resp.status == 200
        alerts: list[dict[str, Any]] = await resp.json()
        return alerts


def am_settings(tmp_path: Path, am: AlertmanagerServer) -> Settings:
    return settings_for(
        tmp_path,
        "fails-verification",
        FAILING,
        {
            "channels": [{"name": "am", "type": "alertmanager", "url": am.url, "timeout": "5s"}],
            # re-posted every second, so the resolved-alert sweep in the same pass is quick too
            "alertmanager": {"resend_interval": "1s", "ends_after": "1m", "labels": {"team": "ops"}},
        },
    )


async def test_a_failed_verification_fires_in_alertmanager_and_an_ack_resolves_it(
    alertmanager_server: Callable[[str], AlertmanagerServer], apps: AppFactory, tmp_path: Path
) -> None:
    am = alertmanager_server(AM_CONFIG)
    client = await apps(am_settings(tmp_path, am))
    assert (await client.post("/hooks/alertmanager", json=alert_body())).status == 200
    run = await only_execution(client)
    await state_is(client, run["id"], "escalated")

    [alert] = await poll(lambda: am_alerts(am.url, run["id"]))
    assert alert["labels"] == {
        "alertname": "RemediationFailed",
        "execution_id": run["id"],
        "rule": "jetstream",
        "playbook": "fails-verification",
        "target": "127.0.0.1:19101",
        "severity": "page",
        "original_alertname": "NatsJetStreamUnhealthy",
        "instance": "127.0.0.1:19101",
        "team": "ops",
    }
    assert alert["annotations"]["report_url"] == f"http://127.0.0.1:9095/executions/{run['id']}"
    summary = alert["annotations"]["summary"]
    assert summary.startswith("NatsJetStreamUnhealthy fired on 127.0.0.1:19101 (rule jetstream")
    assert "ran playbook fails-verification: poke ok" in summary
    assert "verification did not hold within 0.3s" in summary
    assert alert["status"]["state"] == "active"

    # the wrong operator token changes nothing
    denied = await client.post(f"/api/v1/executions/{run['id']}/ack", headers=auth("wrong"))
    assert denied.status == 401
    [escalation] = await store(client).escalations_for(run["id"])
    assert escalation["state"] == "open"

    acked = await client.post(f"/api/v1/executions/{run['id']}/ack?by=alice", headers=auth())
    assert acked.status == 200
    assert await acked.json() == {"status": "acknowledged", "by": "alice", "escalations": 1}
    await poll(lambda: _none_left(am.url, run["id"]))

    async def all_delivered() -> dict[str, Any] | None:
        # Alertmanager can show the alert resolved a moment before the delivery is recorded
        [escalation] = await store(client).escalations_for(run["id"])
        return escalation if all(m["delivered_at"] for m in escalation["messages"]) else None

    escalation = await poll(all_delivered)
    assert (escalation["state"], escalation["acked_by"]) == ("acknowledged", "alice")
    assert [m["kind"] for m in escalation["messages"]] == ["notify", "close"]
    again = await client.post(f"/api/v1/executions/{run['id']}/ack", headers=auth())
    assert again.status == 409


async def test_the_original_alert_resolving_resolves_the_escalation_in_alertmanager(
    alertmanager_server: Callable[[str], AlertmanagerServer], apps: AppFactory, tmp_path: Path
) -> None:
    am = alertmanager_server(AM_CONFIG)
    client = await apps(am_settings(tmp_path, am))
    assert (await client.post("/hooks/alertmanager", json=alert_body())).status == 200
    run = await only_execution(client)
    await state_is(client, run["id"], "escalated")
    await poll(lambda: am_alerts(am.url, run["id"]))

    assert (await client.post("/hooks/alertmanager", json=alert_body(status="resolved"))).status == 200
    await poll(lambda: _none_left(am.url, run["id"]))
    [escalation] = await store(client).escalations_for(run["id"])
    assert (escalation["state"], escalation["close_reason"]) == ("closed", "the original alert resolved")


async def _none_left(am_url: str, execution_id: str) -> bool:
    return not await am_alerts(am_url, execution_id)


def outbox_settings(tmp_path: Path, receiver: Receiver, level1_delay: str = "1s") -> Settings:
    retry = {"timeout": "2s", "backoff": 0.1, "max_backoff": 0.3}
    return settings_for(
        tmp_path,
        "fails-verification",
        FAILING,
        {
            "channels": [
                {"name": "hook", "type": "webhook", "url": receiver.url("/hook"), **retry},
                {"name": "chat", "type": "slack", "url": receiver.url("/chat"), **retry},
            ],
            "levels": [{"channels": ["hook"]}, {"delay": level1_delay, "channels": ["hook", "chat"]}],
        },
    )


async def _messages(client: Any, execution_id: str) -> list[dict[str, Any]]:
    return [m for e in await store(client).escalations_for(execution_id) for m in e["messages"]]


async def test_the_outbox_delivers_once_per_level_per_channel_when_the_channel_returns_across_restarts(
    apps: AppFactory, receiver: Receiver, tmp_path: Path
) -> None:
    settings = outbox_settings(tmp_path, receiver)
    first = await apps(settings)  # the receiver is not listening: connections are refused
    assert (await first.post("/hooks/alertmanager", json=alert_body())).status == 200
    run = await only_execution(first)
    await state_is(first, run["id"], "escalated")

    async def every_level_tried() -> list[dict[str, Any]] | None:
        messages = await _messages(first, run["id"])
        return messages if len(messages) == 3 and all(m["attempts"] >= 1 for m in messages) else None

    messages = await poll(every_level_tried)
    assert all(m["delivered_at"] is None and m["last_error"] for m in messages)
    assert any("Connect" in m["last_error"] for m in messages)
    metrics = await (await first.get("/metrics")).text()
    assert 'remediator_escalation_delivery_failures_total{channel="hook"}' in metrics
    report = await (await first.get(f"/api/v1/executions/{run['id']}")).json()
    assert any(e["kind"] == "delivery" and "retrying with backoff" in e["message"] for e in report["timeline"])
    await first.close()

    await receiver.start()
    second = await apps(settings)
    await poll(lambda: _all_delivered(second, run["id"]))
    assert sorted(p for p, _ in receiver.bodies) == ["/chat", "/hook", "/hook"]
    hooks = receiver.at("/hook")
    assert sorted((b["level"], b["id"].split("/", 1)[1]) for b in hooks) == [
        (0, "level-0/hook"),
        (1, "level-1/hook"),
    ]
    assert all(b["execution_id"] == run["id"] and b["event"] == "escalation" for b in hooks)
    assert hooks[0]["report_url"] == f"http://127.0.0.1:9095/executions/{run['id']}"
    [chat] = receiver.at("/chat")
    assert chat["text"].startswith("[page] RemediationFailed (level 1: not acknowledged yet): NatsJetStreamUnhealthy")
    assert chat["text"].endswith(f"Report: http://127.0.0.1:9095/executions/{run['id']}")
    metrics = await (await second.get("/metrics")).text()
    assert 'remediator_escalation_deliveries_total{channel="hook",result="delivered"} 2.0' in metrics
    assert await second.app[RUNTIME].escalator.deliver_due() == 0
    await second.close()

    third = await apps(settings)  # nothing is sent twice after another restart
    assert await third.app[RUNTIME].escalator.deliver_due() == 0
    assert len(receiver.bodies) == 3


async def _all_delivered(client: Any, execution_id: str) -> bool:
    messages = await _messages(client, execution_id)
    return len(messages) == 3 and all(m["delivered_at"] for m in messages)


async def test_an_acknowledgement_stops_the_later_levels(apps: AppFactory, receiver: Receiver, tmp_path: Path) -> None:
    await receiver.start()
    client = await apps(outbox_settings(tmp_path, receiver, level1_delay="1500ms"))
    assert (await client.post("/hooks/alertmanager", json=alert_body("aaaa000000000001"))).status == 200
    acked = await only_execution(client)
    await state_is(client, acked["id"], "escalated")
    await poll(lambda: _delivered_count(receiver, acked["id"], 1))
    assert (
        await client.post(f"/api/v1/executions/{acked['id']}/ack", headers={**auth(), "X-Remediator-User": "bob"})
    ).status == 200
    await poll(lambda: _delivered_count(receiver, acked["id"], 2))  # the closing message to the hook

    # A second escalation opened later reaching its level 1 proves the first one's level-1 time passed.
    assert (await client.post("/hooks/alertmanager", json=alert_body("aaaa000000000002"))).status == 200
    other = await poll(lambda: _other_run(client, acked["id"]))
    await poll(lambda: _delivered_count(receiver, other["id"], 3))
    closing = [b for b in receiver.at("/hook") if b["execution_id"] == acked["id"]]
    assert [(b["event"], b["level"]) for b in closing] == [("escalation", 0), ("closed", None)]
    assert closing[1]["state"] == "acknowledged" and closing[1]["by"] == "bob"
    assert not any(acked["id"] in b.get("text", "") for b in receiver.at("/chat"))


async def _delivered_count(receiver: Receiver, execution_id: str, n: int) -> bool:
    sent = [b for p, b in receiver.bodies if b.get("execution_id") == execution_id or execution_id in b.get("text", "")]
    return len(sent) >= n


async def _other_run(client: Any, first_id: str) -> dict[str, Any] | None:
    rows = (await (await client.get("/api/v1/executions")).json())["executions"]
    return next((r for r in rows if r["id"] != first_id), None)


# --- settings ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("escalation", "message"),
    [
        (
            {"channels": [{"name": "bus", "type": "nats", "subject": "remediator.escalations"}]},
            "the first level must have a channel that is not nats",
        ),
        (
            {
                "channels": [
                    {"name": "bus", "type": "nats", "subject": "x"},
                    {"name": "hook", "type": "webhook", "url": "http://127.0.0.1:1/"},
                ],
                "levels": [{"channels": ["bus"]}, {"delay": "5m", "channels": ["hook"]}],
            },
            "the first level must have a channel that is not nats",
        ),
        (
            {"channels": [{"name": "hook", "type": "webhook"}], "levels": [{"channels": ["pager"]}]},
            "levels[0] names unknown channels: pager",
        ),
        (
            {"channels": [{"name": "hook", "type": "webhook"}], "levels": [{"delay": "1m", "channels": ["hook"]}]},
            "levels[0] is notified at once",
        ),
        ({"alertmanager": {"resend_interval": "1m", "ends_after": "90s"}}, "at least twice resend_interval"),
        ({"channels": [{"name": "bus", "type": "nats"}]}, "a nats channel needs a subject"),
    ],
)
def test_escalation_settings_are_refused_with_a_reason(
    tmp_path: Path, escalation: dict[str, Any], message: str
) -> None:
    path = tmp_path / "remediator.yaml"
    path.write_text(json.dumps({"escalation": escalation}))
    with pytest.raises(SettingsError) as info:
        load_settings(path, env={})
    assert message in str(info.value)
    assert str(path) in str(info.value)


def test_a_webhook_url_comes_from_a_file_or_the_environment_never_missing(tmp_path: Path) -> None:
    (tmp_path / "slack-url").write_text("https://hooks.example.invalid/T000/B000\n")
    path = tmp_path / "remediator.yaml"
    path.write_text(
        "escalation:\n  channels:\n"
        "    - {name: chat, type: slack, url_file: slack-url}\n"
        "    - {name: on-call, type: webhook}\n"
    )
    settings = load_settings(path, env={})
    with pytest.raises(SettingsError, match="channel on-call needs url, url_file or REMEDIATOR_CHANNEL_ON_CALL_URL"):
        load_secrets(settings, env={})
    secrets = load_secrets(settings, env={"REMEDIATOR_CHANNEL_ON_CALL_URL": "http://127.0.0.1:1/hook"})
    assert secrets.channel_urls == {
        "chat": "https://hooks.example.invalid/T000/B000",
        "on-call": "http://127.0.0.1:1/hook",
    }
    assert "https://hooks.example.invalid/T000/B000" in secrets.values()


async def test_a_nats_subject_gets_the_escalation_beside_another_channel(
    nats_server: NatsServer, apps: AppFactory, receiver: Receiver, tmp_path: Path
) -> None:
    await receiver.start()
    nc = await nats.connect(nats_server.client_url, connect_timeout=5, allow_reconnect=False)
    received: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def on_message(msg: Any) -> None:
        received.put_nowait(json.loads(msg.data))

    await nc.subscribe("remediator.escalations", cb=on_message)
    await nc.flush(timeout=5)
    try:
        settings = settings_for(
            tmp_path,
            "fails-verification",
            FAILING,
            {
                "channels": [
                    {"name": "hook", "type": "webhook", "url": receiver.url("/hook")},
                    {"name": "bus", "type": "nats", "url": nats_server.client_url, "subject": "remediator.escalations"},
                ]
            },
        )
        client = await apps(settings)
        assert (await client.post("/hooks/alertmanager", json=alert_body())).status == 200
        run = await only_execution(client)
        message = await asyncio.wait_for(received.get(), 20)
        assert (message["execution_id"], message["event"], message["level"]) == (run["id"], "escalation", 0)
        assert message["id"].endswith("/level-0/bus")
        await poll(lambda: _hook_events(receiver, 1))
    finally:
        await nc.close()


async def _hook_events(receiver: Receiver, n: int) -> bool:
    return len(receiver.at("/hook")) >= n


async def test_a_level_due_while_the_service_was_down_is_sent_after_the_restart(
    apps: AppFactory, receiver: Receiver, tmp_path: Path
) -> None:
    await receiver.start()
    settings = outbox_settings(tmp_path, receiver, level1_delay="2s")
    first = await apps(settings)
    assert (await first.post("/hooks/alertmanager", json=alert_body())).status == 200
    run = await only_execution(first)
    await poll(lambda: _delivered_count(receiver, run["id"], 1))
    await first.close()
    assert len(receiver.bodies) == 1  # level 1 was not due yet when the service stopped

    await apps(settings)
    await poll(lambda: _delivered_count(receiver, run["id"], 3))
    assert sorted((p, b.get("level")) for p, b in receiver.bodies) == [("/chat", None), ("/hook", 0), ("/hook", 1)]


async def test_an_alertmanager_pair_with_the_first_replica_down_still_pages_once(
    alertmanager_server: Callable[[str], AlertmanagerServer], apps: AppFactory, receiver: Receiver, tmp_path: Path
) -> None:
    """Escalations go to every configured Alertmanager, as Prometheus sends its alerts: with the replica
    listed first stopped, the other takes the alert and its route pages exactly once."""
    paging = f"""
route:
  receiver: pager
  group_by: [execution_id]
  group_wait: 0s
  group_interval: 1s
  repeat_interval: 1h
receivers:
  - name: pager
    webhook_configs: [{{url: "{receiver.url("/page")}", send_resolved: false}}]
"""
    await receiver.start()
    first, second = alertmanager_server(paging), alertmanager_server(paging)
    first.stop()  # the replica a single-URL remediator would post to
    settings = am_settings(tmp_path, second)
    channel = settings.escalation.channels[0].model_copy(update={"url": None})  # every Alertmanager
    escalation = settings.escalation.model_copy(update={"channels": [channel]})
    client = await apps(
        settings.model_copy(
            update={
                "alertmanager_url": first.url,
                "alertmanager_urls": [first.url, second.url],
                "escalation": escalation,
            }
        )
    )
    assert (await client.post("/hooks/alertmanager", json=alert_body())).status == 200
    run = await only_execution(client)
    await state_is(client, run["id"], "escalated")

    [page] = await poll(lambda: _pages(receiver), what="the page from the replica that is up")
    assert page["alerts"][0]["labels"]["execution_id"] == run["id"]
    [escalation] = await store(client).escalations_for(run["id"])
    [notify] = [m for m in escalation["messages"] if m["kind"] == "notify"]
    assert notify["delivered_at"] and notify["attempts"] == 1  # one replica took it: delivered, not retried
    # re-posts every second keep the alert alive in the replica that is up; it pages once
    await poll(lambda: _reposted(second.url, run["id"]), what="two re-posts")
    assert len(await _pages(receiver) or []) == 1


async def _pages(receiver: Receiver) -> list[dict[str, Any]] | None:
    return receiver.at("/page") or None


async def _reposted(am_url: str, execution_id: str) -> bool:
    [alert] = await am_alerts(am_url, execution_id)
    return bool(alert["updatedAt"] > alert["startsAt"])
