"""Hot reload against a running `remediator serve`: POST /-/reload and SIGHUP, good and bad changes."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import sqlite3
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from support.service_proc import ServiceProcess

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
FIRING = (FIXTURES / "alertmanager" / "firing-nats-jetstream-unhealthy.json").read_bytes()
FIRING_BODY = json.loads(FIRING)
JSON = {"Content-Type": "application/json"}
DEADLINE = 10.0
# Simulate takes a webhook body, as Alertmanager sends it: the captured one with the new alert in it.
NEW_ALERT = {
    **FIRING_BODY,
    "alerts": [{**FIRING_BODY["alerts"][0], "labels": {"alertname": "BrandNew", "instance": "n9:8222"}}],
}
OPERATOR_TOKEN = "reload-operator-token"
NEW_RULE = """\
rules:
  - name: brand-new
    match: ['alertname="BrandNew"']
    playbook: nats-restart
    params:
      instance: "{{ labels.instance }}"
"""
BAD_RULE = """\
rules:
  - name: broken
    match:
      - alertname="NatsDown"
      - instance=~"("
    playbook: nats-restart
"""


def write_atomically(path: Path, text: str) -> None:
    # A reload must never see half a file: the editor's rename, not a partial write.
    temporary = path.with_suffix(".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


@pytest.fixture
def service(tmp_path: Path) -> Iterator[ServiceProcess]:
    shutil.copytree(FIXTURES / "rules", tmp_path / "rules")
    shutil.copytree(FIXTURES / "playbooks", tmp_path / "playbooks")
    # dry_run: the posted alerts are dispatched and recorded, but no playbook touches this machine.
    config = {
        "rules": [str(tmp_path / "rules" / "*.yaml")],
        "playbooks": [str(tmp_path / "playbooks" / "*.yaml")],
        "dry_run": True,
    }
    proc = ServiceProcess(workdir=tmp_path, config=config, env={"REMEDIATOR_OPERATOR_TOKEN": OPERATOR_TOKEN})
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as client:
        yield client


async def decisions(session: aiohttp.ClientSession, service: ServiceProcess, body: Any) -> list[str]:
    async with session.post(f"{service.url}/api/v1/simulate", json=body) as response:
        assert response.status == 200, await response.text()
        return [d["rule"] for alert in (await response.json())["alerts"] for d in alert["decisions"]]


async def reload(
    session: aiohttp.ClientSession, service: ServiceProcess, token: str | None = OPERATOR_TOKEN
) -> tuple[int, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with session.post(f"{service.url}/-/reload", headers=headers) as response:
        return response.status, await response.json()


async def reload_metrics(session: aiohttp.ClientSession, service: ServiceProcess) -> tuple[float, float]:
    """(last reload successful, timestamp of the last successful reload)."""
    async with session.get(f"{service.url}/metrics") as response:
        text = await response.text()
    values = dict(line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#"))
    return (
        float(values["remediator_config_last_reload_successful"]),
        float(values["remediator_config_last_reload_success_timestamp_seconds"]),
    )


async def until_successful_is(session: aiohttp.ClientSession, service: ServiceProcess, wanted: float) -> float:
    """Polls /metrics until the reload gauge reads ``wanted``; returns the success timestamp then."""
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        successful, stamp = await reload_metrics(session, service)
        if successful == wanted:
            return stamp
    raise AssertionError(f"remediator_config_last_reload_successful never became {wanted}:\n{service.logs()}")


async def test_valid_change_via_post_takes_effect(service: ServiceProcess, session: aiohttp.ClientSession) -> None:
    assert await decisions(session, service, NEW_ALERT) == []
    _, first_stamp = await reload_metrics(session, service)
    write_atomically(service.workdir / "rules" / "zz-new.yaml", NEW_RULE)
    status, answer = await reload(session, service)
    assert (status, answer) == (200, {"status": "success"})
    assert await decisions(session, service, NEW_ALERT) == ["brand-new"]
    successful, stamp = await reload_metrics(session, service)
    assert successful == 1 and stamp > first_stamp


async def test_valid_change_via_sighup_takes_effect(service: ServiceProcess, session: aiohttp.ClientSession) -> None:
    assert await decisions(session, service, NEW_ALERT) == []
    write_atomically(service.workdir / "rules" / "zz-new.yaml", NEW_RULE)
    assert service.proc is not None
    service.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + DEADLINE
    while await decisions(session, service, NEW_ALERT) != ["brand-new"]:
        assert time.monotonic() < deadline, f"SIGHUP did not load the new rule:\n{service.logs()}"
    assert service.proc.poll() is None


async def test_posts_during_reloads_all_get_200(service: ServiceProcess, session: aiohttp.ClientSession) -> None:
    rule_file = service.workdir / "rules" / "zz-new.yaml"

    async def post() -> int:
        async with session.post(f"{service.url}/hooks/alertmanager", data=FIRING, headers=JSON) as response:
            return response.status

    async def reloads() -> list[int]:
        statuses = []
        for n in range(10):
            # Alternate between two valid rule sets so each reload really swaps something.
            write_atomically(rule_file, NEW_RULE.replace("brand-new", f"brand-new-{n}"))
            status, _ = await reload(session, service)
            statuses.append(status)
            assert service.proc is not None
            service.proc.send_signal(signal.SIGHUP)
        return statuses

    posts = [asyncio.create_task(post()) for _ in range(60)]
    reload_statuses = await reloads()
    assert [await p for p in posts] == [200] * 60
    assert reload_statuses == [200] * 10
    assert await decisions(session, service, NEW_ALERT) == ["brand-new-9"]
    with sqlite3.connect(service.db_path) as conn:
        assert conn.execute("SELECT count(*) FROM notifications").fetchone()[0] == 60


async def test_invalid_change_keeps_old_rules_and_flips_the_metric(
    service: ServiceProcess, session: aiohttp.ClientSession
) -> None:
    assert await decisions(session, service, FIRING_BODY) == ["nats-jetstream-unhealthy"]
    good_stamp = await until_successful_is(session, service, 1)
    assert good_stamp > 0
    # Break the rule the captured alert matches: were the bad set taken, the alert would match nothing.
    nats = service.workdir / "rules" / "nats.yaml"
    original = nats.read_text()
    write_atomically(nats, original.replace('severity=~"critical|page"', 'severity=~"(critical"'))

    # SIGHUP: refused; the gauge (1 until now) going to 0 is how we see the signal was handled.
    assert service.proc is not None
    service.proc.send_signal(signal.SIGHUP)
    assert await until_successful_is(session, service, 0) == good_stamp
    assert await decisions(session, service, FIRING_BODY) == ["nats-jetstream-unhealthy"]

    # POST /-/reload: refused with every error named, the old rules keep serving.
    write_atomically(service.workdir / "rules" / "zz-bad.yaml", BAD_RULE)
    status, answer = await reload(session, service)
    assert status == 400
    assert answer == {
        "status": "error",
        "errors": [
            'rules/nats.yaml:7: rules[0].match[1]: invalid regex "(critical": RE2: missing ): (critical',
            'rules/zz-bad.yaml:5: rules[0].match[1]: invalid regex "(": RE2: missing ): (',
        ],
    }
    assert await decisions(session, service, FIRING_BODY) == ["nats-jetstream-unhealthy"]
    assert await reload_metrics(session, service) == (0, good_stamp)

    # Fixed: the next reload succeeds, the gauge goes back to 1 with a newer timestamp.
    (service.workdir / "rules" / "zz-bad.yaml").unlink()
    write_atomically(nats, original)
    status, _ = await reload(session, service)
    assert status == 200
    successful, stamp = await reload_metrics(session, service)
    assert successful == 1 and stamp > good_stamp
    assert await decisions(session, service, FIRING_BODY) == ["nats-jetstream-unhealthy"]


async def test_reload_over_http_needs_the_operator_token(
    service: ServiceProcess, session: aiohttp.ClientSession
) -> None:
    write_atomically(service.workdir / "rules" / "zz-new.yaml", NEW_RULE)
    for token in (None, "wrong"):
        status, answer = await reload(session, service, token)
        assert status == 401, answer
        assert answer["status"] == "error"
    assert await decisions(session, service, NEW_ALERT) == []  # nothing was reloaded
    assert (await reload(session, service))[0] == 200
    assert await decisions(session, service, NEW_ALERT) == ["brand-new"]


@pytest.mark.parametrize(("enabled", "status"), [(False, 403), (True, 200)])
async def test_without_an_operator_token_reload_over_http_is_off_unless_enabled(
    tmp_path: Path, session: aiohttp.ClientSession, enabled: bool, status: int
) -> None:
    shutil.copytree(FIXTURES / "rules", tmp_path / "rules")
    shutil.copytree(FIXTURES / "playbooks", tmp_path / "playbooks")
    config = {
        "rules": [str(tmp_path / "rules" / "*.yaml")],
        "playbooks": [str(tmp_path / "playbooks" / "*.yaml")],
        "web": {"enable_reload": enabled},
    }
    proc = ServiceProcess(workdir=tmp_path, config=config)
    proc.start()
    try:
        write_atomically(tmp_path / "rules" / "zz-new.yaml", NEW_RULE)
        answer_status, answer = await reload(session, proc, token=None)
        assert answer_status == status, answer
        assert await decisions(session, proc, NEW_ALERT) == (["brand-new"] if enabled else [])
        # SIGHUP works either way.
        assert proc.proc is not None
        proc.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + DEADLINE
        while await decisions(session, proc, NEW_ALERT) != ["brand-new"]:
            assert time.monotonic() < deadline, f"SIGHUP did not load the new rule:\n{proc.logs()}"
    finally:
        proc.stop()
