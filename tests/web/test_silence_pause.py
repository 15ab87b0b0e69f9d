"""Automation paused through an Alertmanager silence, against a real Alertmanager."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
from support.app_client import AppClient
from support.flow import QUICK_PLAYBOOK, alert_body, poll, quick_rules, write_config
from support.realprocs import AlertmanagerServer

from service.alerts.matchers import parse_matcher
from service.flow.silences import parse_silences
from service.settings import Settings

AM_CONFIG = """
route:
  receiver: blackhole
receivers:
  - name: blackhole
"""


def test_only_active_silences_with_the_marker_pause_and_their_other_matchers_select() -> None:
    marker = parse_matcher('remediation="paused"')

    def silence(state: str, *matchers: tuple[str, str, bool, bool]) -> dict[str, Any]:
        return {
            "id": f"s-{state}-{len(matchers)}",
            "status": {"state": state},
            "createdBy": "alice",
            "comment": "upgrade",
            "endsAt": "2026-11-27T23:00:00Z",
            "matchers": [{"name": n, "value": v, "isRegex": r, "isEqual": e} for n, v, r, e in matchers],
        }

    paused = ("remediation", "paused", False, True)
    payload = [
        silence("active", paused, ("instance", "node-[12]", True, True), ("env", "dev", False, False)),
        silence("expired", paused),
        silence("active", ("instance", "node-3", False, True)),  # an ordinary silence: not a pause
        {"status": {"state": "active"}, "matchers": [{"name": "remediation"}]},  # malformed: ignored
    ]
    [pause] = parse_silences(payload, marker)
    assert [str(m) for m in pause.matchers] == ['instance=~"node-[12]"', 'env!="dev"']
    assert "silence s-active-3 by alice" in pause.describe()


async def test_a_remediation_silence_in_alertmanager_pauses_what_it_matches(
    alertmanager_server: Callable[[str], AlertmanagerServer], tmp_path: Path, app_client: AppClient
) -> None:
    am = alertmanager_server(AM_CONFIG)
    now = datetime.now(UTC)
    silence = {
        "matchers": [
            {"name": "remediation", "value": "paused", "isRegex": False, "isEqual": True},
            {"name": "instance", "value": "node-1", "isRegex": False, "isEqual": True},
        ],
        "startsAt": now.isoformat(),
        "endsAt": (now + timedelta(hours=1)).isoformat(),
        "createdBy": "alice",
        "comment": "NATS upgrade",
    }
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        async with session.post(f"{am.url}/api/v2/silences", json=silence) as response:
            assert response.status == 200
            silence_id = (await response.json())["silenceID"]

        config = write_config(tmp_path, quick_rules(100), {"quick": QUICK_PLAYBOOK})
        config.update(alertmanager_url=am.url, silence_pause={"interval_seconds": 1})
        client = await app_client(Settings.model_validate(config))

        async def silences() -> list[dict[str, Any]]:
            return (await (await client.get("/api/v1/pauses")).json())["silences"]  # type: ignore[no-any-return]

        [seen] = await poll(silences)
        assert (seen["id"], seen["matchers"]) == (silence_id, ['instance="node-1"'])

        async def runs(n: int) -> list[dict[str, Any]] | None:
            rows = (await (await client.get("/api/v1/executions")).json())["executions"]
            return sorted(rows, key=lambda r: r["created_at"]) if len(rows) >= n else None

        assert (await client.post("/hooks/alertmanager", json=alert_body("a1", instance="node-1"))).status == 200
        assert (await client.post("/hooks/alertmanager", json=alert_body("a2", instance="node-2"))).status == 200
        first, second = await poll(lambda: runs(2))
        assert first["refusal"] == "paused"
        assert f"Alertmanager silence {silence_id} by alice" in first["reason"]
        assert "NATS upgrade" in first["reason"]
        assert second["state"] != "refused"

        async with session.delete(f"{am.url}/api/v2/silence/{silence_id}") as response:
            assert response.status == 200

        async def cleared() -> bool:
            return await silences() == []

        await poll(cleared)
        assert (await client.post("/hooks/alertmanager", json=alert_body("a3", instance="node-1"))).status == 200
        rows = await poll(lambda: runs(3))
        assert rows[2]["state"] != "refused"
