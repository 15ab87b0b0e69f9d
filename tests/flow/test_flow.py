"""The flow in process with real child processes: alert -> rule -> admission -> steps -> verify."""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from support.app_client import AppClient, Client
from support.flow import alert_body, executions, finished, poll, write_config, write_resends

from service.settings import Settings
from service.store import REPEAT_EVENTS_KEPT

RULES = """
rules:
  - name: fix-by-touch
    match: ['alertname="NatsJetStreamUnhealthy"']
    status: firing
    playbook: touch
    params:
      marker: "{{{{ labels.marker | default('done') }}}}"
    limits: {{cooldown: 0, max_runs: 100, window: 1h, concurrency: {concurrency}, max_queue: 5}}
"""

PLAYBOOK = """
name: touch
description: writes a marker file, then verifies it is there
runbook: "T-OPS-04 test"
on_resolved: cancel
params:
  marker: {{pattern: "[a-z0-9-]{{1,40}}"}}
steps:
  - name: write
    type: exec
    argv: ["{python}", "-c", "import pathlib,sys,time; time.sleep(float(sys.argv[3])); pathlib.Path(sys.argv[1]).write_text(sys.argv[2]); print('wrote', sys.argv[1])", "{root}/{{{{ params.marker }}}}", "{{{{ labels.instance }}}}", "{delay}"]
    timeout: 30
verify:
  interval: 0.1
  within: {within}
  checks:
    - name: marker-present
      type: exec
      argv: ["{python}", "-c", "import pathlib,sys; sys.exit(0 if pathlib.Path(sys.argv[1]).exists() else 1)", "{root}/{check}"]
"""

ClientFactory = Callable[..., Awaitable[Client]]


@pytest.fixture
def service(tmp_path: Path, app_client: AppClient) -> ClientFactory:
    async def make(
        delay: float = 0, within: float = 5, check: str = "{{ params.marker }}", concurrency: str = "queued"
    ) -> Client:
        playbook = PLAYBOOK.format(python=sys.executable, root=tmp_path, delay=delay, within=within, check=check)
        rules = RULES.format(concurrency=concurrency)
        return await app_client(Settings.model_validate(write_config(tmp_path, rules, {"touch": playbook})))

    return make


async def test_a_fix_that_holds_succeeds_with_the_measured_values(service: ClientFactory, tmp_path: Path) -> None:
    client = await service()
    assert (await client.post("/hooks/alertmanager", json=alert_body(marker="m1"))).status == 200
    [run] = await poll(lambda: executions(client))
    report = await poll(lambda: finished(client, run["id"], {"succeeded", "failed", "escalated"}))
    assert report["execution"]["state"] == "succeeded"
    assert (tmp_path / "m1").read_text() == "127.0.0.1:19101"  # the label reached argv as one element
    [write] = [s for s in report["steps"] if s["name"] == "write"]
    assert write["ok"] and write["exit_code"] == 0 and "wrote" in write["output"]
    polls = [e for e in report["timeline"] if e["kind"] == "verify"]
    assert polls and polls[-1]["data"]["held"] is True
    assert report["execution"]["params"] == {"marker": "m1"}


async def test_a_fix_that_does_not_hold_fails_after_within_with_every_poll(service: ClientFactory) -> None:
    client = await service(within=0.6, check="never-there")
    assert (await client.post("/hooks/alertmanager", json=alert_body(marker="m2"))).status == 200
    [run] = await poll(lambda: executions(client))
    report = await poll(lambda: finished(client, run["id"], {"succeeded", "failed", "escalated"}))
    assert report["execution"]["state"] == "escalated"
    assert "verification did not hold within 0.6s" in report["execution"]["reason"]
    polls = [e for e in report["timeline"] if e["kind"] == "verify"]
    assert len(polls) >= 3
    assert all(p["data"]["held"] is False for p in polls)
    assert all(p["data"]["checks"][0]["check"] == "marker-present" for p in polls)
    assert any(e["kind"] == "escalation" for e in report["timeline"])


async def test_twenty_identical_notifications_make_one_execution(service: ClientFactory) -> None:
    """One run; the timeline keeps the first repeats and then only the latest, which counts them all."""
    client = await service()
    for _ in range(20):
        assert (await client.post("/hooks/alertmanager", json=alert_body(marker="m3"))).status == 200
        await write_resends(client)  # each re-send written on its own, as when they come seconds apart
    [run] = await poll(lambda: executions(client))
    report = await poll(lambda: finished(client, run["id"], {"succeeded"}))
    repeats = await poll(lambda: _repeats(client, run["id"], "(20 deliveries)"))
    assert len(repeats) == REPEAT_EVENTS_KEPT
    assert [e["message"] for e in repeats[:3]] == [f"alert delivered again ({n} deliveries)" for n in (2, 3, 4)]
    assert len(await executions(client)) == 1
    assert report["execution"]["state"] == "succeeded"


async def test_re_sends_within_one_write_are_one_repeat_counting_them_all(service: ClientFactory) -> None:
    """Re-sends acknowledged from memory are written once a second, one event per occurrence: a burst
    of them (two Alertmanagers, a group change) is one repeat, which counts every delivery."""
    client = await service()
    for _ in range(5):
        answer = await client.post("/hooks/alertmanager", json=alert_body(marker="m4"))
        assert answer.status == 200
    assert (await answer.json())["notification_id"] is None
    [run] = await poll(lambda: executions(client))
    await poll(lambda: finished(client, run["id"], {"succeeded"}))
    await write_resends(client)
    repeats = await poll(lambda: _repeats(client, run["id"], "(5 deliveries)"))
    # one, unless the service's own write came in the middle of the burst
    assert len(repeats) < 4 and repeats[-1]["message"] == "alert delivered again (5 deliveries)"


async def _repeats(client: Client, execution_id: str, last: str) -> list[dict[str, Any]] | None:
    """The repeat events once the last one ends with `last`."""
    report = await (await client.get(f"/api/v1/executions/{execution_id}")).json()
    repeats = [e for e in report["timeline"] if e["kind"] == "repeat"]
    return repeats if repeats and repeats[-1]["message"].endswith(last) else None


async def test_a_resolved_notification_cancels_a_queued_execution(service: ClientFactory) -> None:
    client = await service(delay=3)
    # two occurrences on the same target (instance): the second queues behind the first
    assert (await client.post("/hooks/alertmanager", json=alert_body("aaaa000000000001", marker="q1"))).status == 200
    assert (await client.post("/hooks/alertmanager", json=alert_body("aaaa000000000002", marker="q2"))).status == 200
    runs = await poll(lambda: _at_least(executions(client), 2))
    second = next(r for r in runs if r["params"]["marker"] == "q2")
    assert second["state"] == "queued"
    resolved = alert_body("aaaa000000000002", status="resolved", marker="q2")
    assert (await client.post("/hooks/alertmanager", json=resolved)).status == 200
    report = await poll(lambda: finished(client, second["id"], {"cancelled"}))
    assert not any(s["name"] == "write" for s in report["steps"])


async def _at_least(rows: Awaitable[list[dict[str, Any]]], n: int) -> list[dict[str, Any]] | None:
    got = await rows
    return got if len(got) >= n else None


async def test_param_allowlist_refuses_a_hostile_label_and_runs_nothing(service: ClientFactory, tmp_path: Path) -> None:
    client = await service()
    body = alert_body(marker="x; rm -rf /")
    assert (await client.post("/hooks/alertmanager", json=body)).status == 200
    [run] = await poll(lambda: executions(client))
    assert run["state"] == "refused"
    assert 'param "marker"' in run["reason"] and "does not match pattern" in run["reason"]
    assert not list(tmp_path.glob("x*"))


async def test_restart_mode_cancels_the_active_run_for_the_new_one(service: ClientFactory) -> None:
    client = await service(delay=5, concurrency="restart")
    assert (await client.post("/hooks/alertmanager", json=alert_body("dddd000000000001", marker="r1"))).status == 200
    [first] = await poll(lambda: _at_least(executions(client), 1))
    await poll(lambda: finished(client, first["id"], {"running"}))
    assert (await client.post("/hooks/alertmanager", json=alert_body("dddd000000000002", marker="r2"))).status == 200
    report = await poll(lambda: finished(client, first["id"], {"cancelled"}))
    assert any(e["kind"] == "restart" for e in report["timeline"])
    runs = await executions(client)
    second = next(r for r in runs if r["params"]["marker"] == "r2")
    assert second["state"] in ("queued", "running", "verifying", "succeeded")


async def test_a_resolved_alert_cancels_its_running_execution_when_the_playbook_says_so(
    service: ClientFactory,
) -> None:
    client = await service(delay=5)  # the playbook says on_resolved: cancel
    assert (await client.post("/hooks/alertmanager", json=alert_body("ffff000000000001", marker="c1"))).status == 200
    [run] = await poll(lambda: _at_least(executions(client), 1))
    await poll(lambda: finished(client, run["id"], {"running"}))
    resolved = alert_body("ffff000000000001", status="resolved", marker="c1")
    assert (await client.post("/hooks/alertmanager", json=resolved)).status == 200
    report = await poll(lambda: finished(client, run["id"], {"cancelled"}))
    assert any(e["kind"] == "resolved" for e in report["timeline"])
