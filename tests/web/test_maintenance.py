"""Pauses, tripped budgets with a human reset, and the storm guard's single escalation, in process."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from support.app_client import AppClient, Client
from support.flow import QUICK_PLAYBOOK, alert_body, poll, quick_rules, write_config

from service.settings import Secrets, Settings

OPERATOR = {"Authorization": "Bearer op-token"}
ClientFactory = Callable[..., Awaitable[Client]]


@pytest.fixture
def service(tmp_path: Path, app_client: AppClient) -> ClientFactory:
    async def make(**limits: Any) -> Client:
        config = write_config(tmp_path, quick_rules(1), {"quick": QUICK_PLAYBOOK})
        config["limits"] = limits
        # a refusal while the target's run runs waits for it; none waits past its end here
        config["escalation"] = {"refusal_grace": 0}
        settings = Settings.model_validate(config)
        return await app_client(settings, Secrets(None, None, "op-token"))

    return make


async def runs(client: Client, n: int) -> list[dict[str, Any]] | None:
    rows = (await (await client.get("/api/v1/executions?limit=500")).json())["executions"]
    return sorted(rows, key=lambda r: r["created_at"]) if len(rows) >= n else None


async def escalated(client: Client, execution_id: str) -> bool:
    report = await (await client.get(f"/api/v1/executions/{execution_id}")).json()
    return any(e["kind"] == "escalation" for e in report["timeline"])


async def post_alert(client: Client, n: int, instance: str = "node-1") -> None:
    body = alert_body(f"cccc{n:012x}", instance=instance)
    assert (await client.post("/hooks/alertmanager", json=body)).status == 200


async def test_pause_refuses_with_its_reason_and_resume_lets_runs_through(service: ClientFactory) -> None:
    client = await service()
    pause = {"rule": "quick-fix", "target": "node-1", "reason": "maintenance window"}
    assert (await client.post("/api/v1/pauses", json=pause)).status == 401
    assert (await client.post("/api/v1/pauses", json=pause, headers={"Authorization": "Bearer no"})).status == 401
    assert (await client.post("/api/v1/pauses", json={"reason": ""}, headers=OPERATOR)).status == 400
    assert (await (await client.get("/api/v1/pauses")).json())["pauses"] == []
    created = await client.post("/api/v1/pauses?by=alice", json=pause, headers=OPERATOR)
    assert created.status == 201
    pause_id = (await created.json())["id"]
    await post_alert(client, 1)
    [refused] = await poll(lambda: runs(client, 1))
    assert refused["state"] == "refused" and refused["refusal"] == "paused"
    assert "by alice: maintenance window" in refused["reason"]
    # another target is not paused
    await post_alert(client, 2, instance="node-2")
    rows = await poll(lambda: runs(client, 2))
    assert rows[1]["state"] != "refused"
    assert (await client.delete(f"/api/v1/pauses/{pause_id}", headers=OPERATOR)).status == 200
    await post_alert(client, 3)
    rows = await poll(lambda: runs(client, 3))
    assert rows[2]["state"] != "refused"


async def test_a_pause_takes_its_duration_in_the_form_every_duration_takes(service: ClientFactory) -> None:
    client = await service()
    pause = {"rule": "quick-fix", "reason": "upgrade", "duration": "1h30m"}
    created = await client.post("/api/v1/pauses", json=pause, headers=OPERATOR)
    assert created.status == 201
    [listed] = (await (await client.get("/api/v1/pauses")).json())["pauses"]
    span = datetime.fromisoformat(listed["until"]) - datetime.fromisoformat(listed["created_at"])
    assert span == timedelta(hours=1, minutes=30)
    bad = await client.post("/api/v1/pauses", json={**pause, "duration": "soon"}, headers=OPERATOR)
    assert bad.status == 400 and "invalid duration 'soon'" in await bad.text()


async def test_tripped_budget_escalates_once_until_a_person_resets_it(service: ClientFactory) -> None:
    client = await service()
    for n in range(3):
        await post_alert(client, n)
    first, second, third = await poll(lambda: runs(client, 3))
    assert first["state"] != "refused"
    assert (second["refusal"], third["refusal"]) == ("budget_spent", "budget_spent")

    async def paged() -> list[bool] | None:
        pages = [await escalated(client, r["id"]) for r in (second, third)]
        return pages if any(pages) else None

    # once, not for every alert that hits the trip (which one depends on whether the run still ran)
    assert sorted(await poll(paged)) == [False, True]
    reset = {"rule": "quick-fix", "target": "node-1"}
    assert (await client.post("/api/v1/limits/reset", json=reset)).status == 401
    assert (await client.post("/api/v1/limits/reset", json=reset, headers=OPERATOR)).status == 200
    await post_alert(client, 9)
    rows = await poll(lambda: runs(client, 4))
    assert rows[3]["state"] != "refused"


async def test_storm_guard_holds_and_escalates_once(service: ClientFactory) -> None:
    client = await service(storm_max_admissions=2, storm_window_seconds=600)
    for n in range(6):
        await post_alert(client, n, instance=f"node-{n}")
    rows = await poll(lambda: runs(client, 6))
    refused = [r for r in rows if r["state"] == "refused"]
    assert [r["refusal"] for r in refused] == ["storm"] * 4
    assert len(rows) - len(refused) == 2
    assert await poll(lambda: escalated(client, refused[0]["id"]))
    assert [await escalated(client, r["id"]) for r in refused[1:]] == [False, False, False]
    metrics = await (await client.get("/metrics")).text()
    assert 'remediator_admission_decisions_total{decision="refuse",reason="storm",rule="quick-fix"} 4.0' in metrics


async def test_maintenance_page_pauses_resumes_and_resets_with_the_operator_token(service: ClientFactory) -> None:
    client = await service()
    page = await (await client.get("/maintenance")).text()
    assert "Automation is not paused anywhere." in page and 'href="/maintenance"' in page
    form = {"rule": "quick-fix", "target": "node-1", "reason": "disk swap <b>", "minutes": "30", "by": "bob"}

    async def submit(path: str, fields: dict[str, str]) -> str:
        response = await client.post(path, data=fields, allow_redirects=False)
        assert response.status == 303
        return response.headers["Location"]

    assert await submit("/maintenance/pause", {**form, "token": "nope"}) == "/maintenance?result=unauthorized"
    assert (await (await client.get("/api/v1/pauses")).json())["pauses"] == []
    bad = {**form, "minutes": "-3", "token": "op-token"}
    assert await submit("/maintenance/pause", bad) == "/maintenance?result=invalid"
    assert await submit("/maintenance/pause", {**form, "token": "op-token"}) == "/maintenance?result=paused"
    [pause] = (await (await client.get("/api/v1/pauses")).json())["pauses"]
    assert (pause["created_by"], pause["until"] is not None) == ("bob", True)
    page = await (await client.get("/maintenance?result=paused")).text()
    assert "disk swap &lt;b&gt;" in page and "Paused:" in page

    await post_alert(client, 1)
    [refused] = await poll(lambda: runs(client, 1))
    assert refused["refusal"] == "paused"

    resume = f"/maintenance/pauses/{pause['id']}/resume"
    assert await submit(resume, {"token": "op-token", "by": "bob"}) == "/maintenance?result=resumed"
    assert await submit(resume, {"token": "op-token"}) == "/maintenance?result=missing"
    reset = {"rule": "quick-fix", "target": "node-1", "token": "op-token", "by": "bob"}
    assert await submit("/maintenance/reset", reset) == "/maintenance?result=reset"
