"""Approvals end to end: pending -> approve (named) -> the guarded step runs; pending -> timeout ->
denied -> escalated; a wrong operator token changes nothing; requests outlive a restart in the store."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from support.escalation import (  # noqa: F401 (fixtures)
    PY,
    AppFactory,
    Client,
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

from service.settings import Settings
from service.store import NewExecution, SQLiteStore

GUARDED = """
name: guarded
description: asks a person, then writes a marker
steps:
  - name: ask
    type: approval
    prompt: "restart the router?"
    timeout: {timeout}
  - name: guarded
    type: exec
    argv: ["{py}", "-c", "import pathlib,sys; pathlib.Path(sys.argv[1]).write_text('ran')", "{marker}"]
"""


def approval_settings(tmp_path: Path, receiver: Receiver, timeout: str = "30s") -> Settings:
    playbook = GUARDED.format(timeout=timeout, py=PY, marker=tmp_path / "guarded-ran")
    return settings_for(
        tmp_path, "guarded", playbook, {"channels": [{"name": "hook", "type": "webhook", "url": receiver.url("/hook")}]}
    )


async def _hook_events(receiver: Receiver, n: int) -> list[dict[str, Any]] | None:
    bodies = receiver.at("/hook")
    return bodies if len(bodies) >= n else None


async def _pending(client: Client) -> dict[str, Any]:
    """The execution, once it waits for a decision and the escalation with the links went out."""
    run = await only_execution(client)
    await state_is(client, run["id"], "awaiting_approval")
    return run


async def test_approve_with_a_name_runs_the_guarded_step_and_a_wrong_token_changes_nothing(
    apps: AppFactory, receiver: Receiver, tmp_path: Path
) -> None:
    await receiver.start()
    client = await apps(approval_settings(tmp_path, receiver))
    assert (await client.post("/hooks/alertmanager", json=alert_body())).status == 200
    run = await _pending(client)
    [request] = await poll(lambda: _hook_events(receiver, 1))
    base = f"http://127.0.0.1:9095/api/v1/executions/{run['id']}"
    assert (request["kind"], request["severity"]) == ("approval", "warning")
    assert (request["approve_url"], request["deny_url"]) == (f"{base}/approve", f"{base}/deny")
    assert request["labels"]["alertname"] == "RemediationApprovalPending"
    assert "restart the router?" in request["summary"] and f"{base}/approve" in request["summary"]

    for headers in ({}, auth("wrong-token"), {"Authorization": "Basic b3A6b3A="}):
        refused = await client.post(f"/api/v1/executions/{run['id']}/approve?by=mallory", headers=headers)
        assert refused.status == 401
    [approval] = await store(client).approvals_for(run["id"])
    assert approval.decision is None and approval.step == "ask" and approval.prompt == "restart the router?"
    assert approval.deadline - approval.requested_at == timedelta(seconds=30)
    report = await state_is(client, run["id"], "awaiting_approval")
    assert not (tmp_path / "guarded-ran").exists()
    assert not any(e["kind"] == "approval" for e in report["timeline"])

    approved = await client.post(f"/api/v1/executions/{run['id']}/approve?by=alice", headers=auth())
    assert approved.status == 200
    assert await approved.json() == {"status": "approved", "by": "alice"}
    report = await state_is(client, run["id"], "succeeded")
    assert (tmp_path / "guarded-ran").read_text() == "ran"
    [approval] = await store(client).approvals_for(run["id"])
    assert (approval.decision, approval.approver) == ("approved", "alice")
    assert any(e["kind"] == "approval" and e["message"] == "approved by alice" for e in report["timeline"])
    _, closing = await poll(lambda: _hook_events(receiver, 2))
    assert (closing["event"], closing["state"], closing["reason"]) == ("closed", "closed", "approval approved by alice")

    again = await client.post(f"/api/v1/executions/{run['id']}/deny", headers=auth())
    assert again.status == 409
    assert "the last one was approved by alice" in (await again.json())["error"]


async def test_deny_by_header_name_skips_the_guarded_step(apps: AppFactory, receiver: Receiver, tmp_path: Path) -> None:
    await receiver.start()
    client = await apps(approval_settings(tmp_path, receiver))
    assert (await client.post("/hooks/alertmanager", json=alert_body())).status == 200
    run = await _pending(client)
    denied = await client.post(f"/api/v1/executions/{run['id']}/deny", headers={**auth(), "X-Remediator-User": "bob"})
    assert await denied.json() == {"status": "denied", "by": "bob"}
    report = await state_is(client, run["id"], "escalated")
    assert not (tmp_path / "guarded-ran").exists()
    assert 'step "ask" failed: denied by bob' in report["execution"]["reason"]
    [approval] = await store(client).approvals_for(run["id"])
    assert (approval.decision, approval.approver) == ("denied", "bob")


async def test_a_timeout_denies_and_escalates(apps: AppFactory, receiver: Receiver, tmp_path: Path) -> None:
    await receiver.start()
    client = await apps(approval_settings(tmp_path, receiver, timeout="1s"))
    assert (await client.post("/hooks/alertmanager", json=alert_body())).status == 200
    run = await only_execution(client)
    report = await state_is(client, run["id"], "escalated")
    assert 'step "ask" failed: denied by timeout after 1s' in report["execution"]["reason"]
    assert not (tmp_path / "guarded-ran").exists()
    [approval] = await store(client).approvals_for(run["id"])
    assert (approval.decision, approval.approver) == ("denied", "timeout after 1s")

    # the approval's closing message and the failure's notice are sent concurrently: any order
    messages = await poll(lambda: _hook_events(receiver, 3))
    by_event = {(m["kind"], m["event"]): m for m in messages}
    assert sorted(by_event) == [("approval", "closed"), ("approval", "escalation"), ("failed", "escalation")]
    closing, failure = by_event["approval", "closed"], by_event["failed", "escalation"]
    assert closing["event"] == "closed" and closing["reason"] == "approval denied by timeout after 1s"
    assert (failure["kind"], failure["labels"]["alertname"], failure["severity"]) == (
        "failed",
        "RemediationFailed",
        "page",
    )
    assert "denied by timeout after 1s" in failure["reason"]
    kinds = [(e["kind"], e["state"]) for e in await store(client).escalations_for(run["id"])]
    assert kinds == [("approval", "closed"), ("failed", "open")]


async def test_requests_left_pending_by_a_crash_are_settled_at_start_up(
    apps: AppFactory, receiver: Receiver, tmp_path: Path
) -> None:
    """The process died while two runs waited (recovery then marked them interrupted): the one past
    its deadline is denied by timeout, the other expires; neither can be approved afterwards."""
    settings = approval_settings(tmp_path, receiver)
    db = SQLiteStore(settings.resolve(settings.store.path))
    await db.open()
    now = datetime.now(UTC)
    for execution_id, deadline in (("ex-late", now - timedelta(minutes=1)), ("ex-early", now + timedelta(hours=1))):
        await db.create_execution(
            NewExecution(
                execution_id, "jetstream", "v", "guarded", "v", "t", None, "fp", "A", "enforce", {}, "interrupted"
            ),
            now - timedelta(minutes=5),
        )
        await db.open_approval(execution_id, "ask", "restart the router?", now - timedelta(minutes=5), deadline)
    await db.close()

    client = await apps(settings)

    async def settled() -> list[tuple[str | None, str | None]] | None:
        decisions = [
            (a.decision, a.approver) for x in ("ex-late", "ex-early") for a in await store(client).approvals_for(x)
        ]
        return decisions if all(d for d, _ in decisions) else None

    assert await poll(settled) == [("denied", "timeout"), ("expired", "the remediator")]
    refused = await client.post("/api/v1/executions/ex-early/approve", headers=auth())
    assert refused.status == 409
    assert "the last one was expired by the remediator" in (await refused.json())["error"]
