"""Circuit breakers (T-OPS-04 §2) through the whole stack: CircuitBreakerOpen fires per tenant and
provider, the shipped circuit-breaker-open playbook judges the provider from Prometheus and either
forces the breaker half-open (the probes close it) or leaves it open and escalates, which shows up
in Alertmanager as a RemediationFailed alert."""

from __future__ import annotations

from typing import Any

import pytest

from demo.processes import poll
from demo.stack import Stack
from e2e.stack import (
    escalation_events,
    remediation_alerts,
    router_series,
    step,
    wait_alert_resolved,
    wait_firing,
    wait_remediation_alert,
)


@pytest.mark.timeout(180)
def test_breaker_open_with_healthy_provider_goes_half_open_then_closed(stacks: Any) -> None:
    stack: Stack = stacks()
    stack.router_admin("POST", "faults/circuit_breaker/tenant_a/openai/open")
    wait_firing(stack, ["CircuitBreakerOpen"], tenant="tenant_a", provider="openai")

    run = stack.wait_execution(
        "the breaker remediation",
        60,
        lambda r: r["state"] != "refused" and r["target"] == f"{stack.router_instance}/tenant_a/openai",
        rule="circuit-breaker-open",
    )
    report = stack.execution(run["id"])
    assert report["execution"]["state"] == "succeeded", report
    assert report["execution"]["reason"] == "verified"
    assert step(report, "breaker_status")["output"].count('"state": "open"') == 1  # evidence, before
    assert step(report, "diagnosis")["ok"] and step(report, "provider_healthy")["ok"]
    assert step(report, "force_half_open")["ok"]
    assert "provider_unhealthy" not in {s["name"] for s in report["steps"]}
    assert not escalation_events(report)

    # The router went open -> half_open -> closed: forced to half-open, closed by its own probes.
    assert (
        router_series(
            stack, "router_circuit_breaker_transitions_total", tenant="tenant_a", provider="openai", to="half_open"
        )
        == 1
    )
    assert (
        router_series(
            stack, "router_circuit_breaker_transitions_total", tenant="tenant_a", provider="openai", to="closed"
        )
        == 1
    )
    assert stack.router_admin("GET", "circuit_breaker/tenant_a/openai/status")["state"] == "closed"
    resolved = wait_alert_resolved(stack, run["id"])
    assert resolved["execution"]["state"] == "succeeded"

    # CircuitBreaker503, held back by inhibition while the breaker was open, arrives now that it is
    # closed (its 1m rate still counts the 503s): the diagnosis finds them explained by the breaker
    # that opened, records the evidence and pages nobody
    diagnosis = stack.wait_execution("the 503 diagnosis", 60, lambda r: True, rule="circuit-breaker-503")
    report = stack.execution(diagnosis["id"])
    assert report["execution"]["state"] == "succeeded", report
    assert step(report, "breakers_recent")["data"]["samples"]
    assert not escalation_events(report)
    assert remediation_alerts(stack) == []


@pytest.mark.timeout(120)
def test_breaker_open_with_failing_provider_escalates_to_alertmanager(stacks: Any) -> None:
    stack: Stack = stacks()
    # A provider that first turns slow (p95 3 s) and then fails every request: both of its
    # breakers open by themselves, and nothing it answers looks healthy.
    stack.router_admin("POST", "faults/provider/anthropic", {"health": "healthy", "extra_latency_ms": 3000})
    poll(
        lambda: stack.query(
            f'router_provider_latency_p95_ms{{instance="{stack.router_instance}",provider="anthropic"}} > 1000'
        ),
        30,
        "Prometheus to see anthropic's p95 above 1 s",
        every=0.2,
    )
    stack.router_admin("POST", "faults/provider/anthropic", {"health": "failing"})
    wait_firing(stack, ["CircuitBreakerOpen"], tenant="tenant_a", provider="anthropic")

    target = f"{stack.router_instance}/tenant_a/anthropic"
    run = stack.wait_execution(
        "the breaker remediation",
        60,
        lambda r: r["state"] != "refused" and r["target"] == target,
        rule="circuit-breaker-open",
    )
    report = stack.execution(run["id"])
    assert report["execution"]["state"] == "escalated", report
    assert not step(report, "diagnosis")["ok"]
    assert step(report, "provider_unhealthy")["ok"]
    assert not step(report, "provider_healthy")["ok"]
    assert "force_half_open" not in {s["name"] for s in report["steps"]}, "a failing provider's breaker stays open"
    reasons = [e["message"] for e in escalation_events(report)]
    assert any("does not look healthy" in r and "p95: " in r for r in reasons), reasons
    assert stack.router_admin("GET", "circuit_breaker/tenant_a/anthropic/status")["state"] == "open"

    # The escalation is an alert in Alertmanager, where people's routes pick it up.
    alert = wait_remediation_alert(stack, run["id"])
    assert alert["status"]["state"] == "active"
    labels = alert["labels"]
    assert labels["original_alertname"] == "CircuitBreakerOpen"
    assert labels["rule"] == "circuit-breaker-open" and labels["target"] == target
    assert labels["instance"] == stack.router_instance
    assert alert["annotations"]["report_url"] == stack.report_url(run["id"])
    assert [r["name"] for r in alert["receivers"]] == ["people"]  # not back into the remediator
