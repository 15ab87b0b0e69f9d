"""Paging per incident on the real stack (issue 18): a NATS outage reported by two routers makes one run
and no page; NATS flapping again and again inside the rule's cooldown pages at most once, never while
the run is verifying. Pages are the remediator's escalations, which reach Alertmanager as
RemediationFailed alerts."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from demo.processes import poll
from demo.stack import Stack
from e2e.stack import escalation_events, finished_report, remediation_alerts

RULE = "nats-process-down"
NATS_ALERTS = ("NatsServerDown", "NatsConnectionLost")
GRACE_S = 20.0  # StackOptions.refusal_grace


def _decisions(stack: Stack) -> list[dict[str, Any]]:
    return sorted(stack.executions(rule=RULE), key=lambda r: r["created_at"])


def _pages(stack: Stack) -> list[tuple[str, dict[str, Any]]]:
    """(execution id, escalation event) for every page opened for the rule's decisions (not closings)."""
    pages = []
    for row in _decisions(stack):
        events = escalation_events(stack.execution(row["id"]))
        pages += [(row["id"], event) for event in events if "channels" in (event["data"] or {})]
    return pages


@pytest.mark.timeout(150)
def test_two_alerts_for_one_nats_outage_make_one_run_and_no_page(stacks: Any) -> None:
    """NATS dies; this router's NatsServerDown starts the restart, and a second router reports the
    same outage (NatsConnectionLost, posted to Alertmanager as its Prometheus would, and resolved
    the same way once it has reconnected)."""
    stack: Stack = stacks()
    fault_at = datetime.now(UTC)
    stack.kill_nats()
    second_router = {
        "labels": {
            "alertname": "NatsConnectionLost",
            "remediation": "1A",
            "severity": "critical",
            "job": "beamline-router",
            "instance": "127.0.0.1:2",
        },
        "annotations": {"summary": "router 2 lost its NATS connection"},
        "startsAt": fault_at.isoformat(),
    }
    stack.post_alerts([second_router])

    def both_decided() -> list[dict[str, Any]] | None:
        rows = _decisions(stack)
        return rows if any(r["alertname"] == "NatsConnectionLost" for r in rows) and len(rows) >= 2 else None

    rows = poll(both_decided, 60, "a decision for each router's alert")
    runs = [r for r in rows if r["state"] != "refused"]
    [refused] = [r for r in rows if r["state"] == "refused"]
    assert len(runs) == 1
    run = poll(lambda: finished_report(stack, runs[0]["id"]), 60, "the NATS restart to verify")
    assert run["execution"]["state"] == "succeeded", run
    # the second alert was shown on the run, and its page waits for the run
    notes = [e["message"] for e in stack.execution(refused["id"])["timeline"] if e["kind"] == "page"]
    assert notes and notes[0].startswith(f"no page now: run {runs[0]['id']} for nats-server"), notes
    # the second router reconnects with NATS back: its Prometheus resolves the alert
    stack.post_alerts([{**second_router, "endsAt": datetime.now(UTC).isoformat()}])

    # past the wait the second alert had resolved with the fix: nobody was paged
    def settled() -> list[str] | None:
        notes = [e["message"] for e in stack.execution(refused["id"])["timeline"] if e["kind"] == "page"]
        return notes if len(notes) > 1 else None

    settled_notes = poll(settled, GRACE_S + 40, "the waiting refusal to be settled")
    assert "no page: the alert resolved while its target was in hand" in settled_notes[-1]
    assert _pages(stack) == [] and remediation_alerts(stack) == []


@pytest.mark.timeout(240)
def test_nats_flapping_within_its_cooldown_pages_at_most_once_and_never_while_the_run_verifies(stacks: Any) -> None:
    stack: Stack = stacks()
    stack.kill_nats()
    first = stack.wait_execution("the first NATS restart", 60, lambda r: r["state"] != "refused", rule=RULE)
    assert first["state"] == "succeeded", stack.execution(first["id"])
    for flap in range(4):  # NATS dies and comes back by itself, four more times within the 10m cooldown
        poll(lambda: stack.nats_pid() is not None, 20, "nats-server running")
        poll(lambda: _nats_alerts_quiet(stack), 30, "the NATS alerts to resolve in Prometheus")  # a new outage
        seen = len(_decisions(stack))
        stack.kill_nats()
        poll(lambda seen=seen: len(_decisions(stack)) > seen, 40, f"a decision for flap {flap + 2}")
        stack.run_script("nats_start.sh")

    rows = _decisions(stack)
    assert len([r for r in rows if r["state"] != "refused"]) <= 2
    # NATS went down again after the fix and the cooldown refused to act: a person must, once
    pages = _pages(stack)
    assert len(pages) == 1, pages
    # not while the run was running or verifying: the page came after the run had finished
    first_report = stack.execution(first["id"])
    assert pages[0][1]["at"] > first_report["execution"]["finished_at"]


def _nats_alerts_quiet(stack: Stack) -> bool:
    return not any(a["labels"].get("alertname") in NATS_ALERTS for a in stack.prometheus_alerts())
