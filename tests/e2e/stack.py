"""Helpers the end-to-end scenarios share: what Prometheus, Alertmanager and the remediator say."""

from __future__ import annotations

from collections.abc import Collection
from datetime import UTC, datetime
from typing import Any

from demo.processes import StackError, get_json, http_json, parse_time, poll
from demo.stack import Stack


def now() -> datetime:
    return datetime.now(UTC)


def wait_firing(stack: Stack, names: Collection[str], timeout: float = 30.0, **labels: str) -> dict[str, datetime]:
    """alertname -> activeAt of the alerts in `names` firing in Prometheus (with these labels), once
    at least one is; polled often, so an alert fixed a few seconds later is still seen."""
    seen: dict[str, datetime] = {}

    def firing() -> dict[str, datetime] | None:
        for alert in stack.prometheus_alerts():
            alert_labels = alert["labels"]
            if (
                alert_labels.get("alertname") in names
                and alert["state"] == "firing"
                and all(alert_labels.get(k) == v for k, v in labels.items())
            ):
                seen.setdefault(alert_labels["alertname"], parse_time(alert["activeAt"]))
        return dict(seen) if seen else None

    return poll(firing, timeout, f"{' or '.join(sorted(names))} to fire in Prometheus")


def wait_alert_resolved(stack: Stack, execution_id: str, timeout: float = 30.0) -> dict[str, Any]:
    """The report once Alertmanager's resolved notification for its alert has arrived."""

    def resolved() -> dict[str, Any] | None:
        report = stack.execution(execution_id)
        return report if report["alert"]["status"] == "resolved" else None

    return poll(resolved, timeout, f"the resolved notification for execution {execution_id}", every=0.2)


def escalation_events(report: dict[str, Any]) -> list[dict[str, Any]]:
    return [e for e in report["timeline"] if e["kind"] == "escalation"]


def step(report: dict[str, Any], name: str, phase: str = "steps") -> dict[str, Any]:
    matches = [s for s in report["steps"] if s["name"] == name and s["phase"] == phase]
    assert matches, f"no step {phase}/{name} in {[(s['phase'], s['name']) for s in report['steps']]}"
    return matches[-1]


def remediation_alerts(stack: Stack, execution_id: str | None = None) -> list[dict[str, Any]]:
    """The remediator's RemediationFailed alerts in Alertmanager (GET /api/v2/alerts)."""
    matchers = ['alertname="RemediationFailed"']
    if execution_id is not None:
        matchers.append(f'execution_id="{execution_id}"')
    return stack.alertmanager_alerts(*matchers)


def wait_remediation_alert(stack: Stack, execution_id: str, timeout: float = 20.0) -> dict[str, Any]:
    def found() -> dict[str, Any] | None:
        alerts = remediation_alerts(stack, execution_id)
        return alerts[0] if alerts else None

    return poll(found, timeout, f"RemediationFailed for {execution_id} in Alertmanager", every=0.2)


def stream_messages(stack: Stack, stream: str = "DECIDE") -> int:
    """Messages kept in a JetStream stream, from NATS's monitoring /jsz."""
    jsz = get_json(f"{stack.nats_monitor_url}/jsz?streams=true")
    for account in jsz.get("account_details") or []:
        for detail in account.get("stream_detail") or []:
            if detail["name"] == stream:
                return int(detail["state"]["messages"])
    raise StackError(f"no stream {stream} in /jsz")


def alertmanager_metric(stack: Stack, name: str) -> float:
    """The sum of one counter over its labels, from Alertmanager's /metrics."""
    status, text = http_json("GET", f"{stack.alertmanager_url}/metrics")
    assert status == 200 and isinstance(text, str), f"Alertmanager /metrics: HTTP {status}"
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


def router_series(stack: Stack, name: str, **labels: str) -> float:
    """The sum of the router's series `name` whose labels include `labels`, from its /metrics."""
    status, text = http_json("GET", f"{stack.router_url}/metrics")
    assert status == 200 and isinstance(text, str), f"router /metrics: HTTP {status}"
    wanted = [f'{k}="{v}"' for k, v in labels.items()]
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(w in line for w in wanted):
            total += float(line.rsplit(" ", 1)[1])
    return total


def finished_report(stack: Stack, execution_id: str) -> dict[str, Any] | None:
    """The execution's report once it is in a final state (for `poll`), else None."""
    report = stack.execution(execution_id)
    done = ("succeeded", "failed", "escalated", "interrupted", "cancelled")
    return report if report["execution"]["state"] in done else None
