"""Prometheus metrics, one registry per app (no process globals, so tests can run several apps)."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, disable_created_metrics

from service import __version__


@dataclass(frozen=True)
class Metrics:
    registry: CollectorRegistry
    webhook_requests: Counter
    alerts_received: Counter
    store_commit_seconds: Histogram
    config_last_reload_successful: Gauge
    config_last_reload_success_timestamp: Gauge
    admission_decisions: Counter
    executions: Counter
    execution_duration_seconds: Histogram
    escalation_deliveries: Counter
    escalation_delivery_failures: Counter
    # Children the webhook's hot path increments on every request, by label value: labels() takes a
    # lock and builds a key on each call, about three times the cost of the increment.
    _children: dict[tuple[Counter, str], Counter] = field(default_factory=dict, repr=False, compare=False)

    def _child(self, metric: Counter, value: str) -> Counter:
        key = (metric, value)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(value)
        return child

    def count_webhook_request(self, code: int) -> None:
        self._child(self.webhook_requests, str(code)).inc()

    def count_alert_received(self, status: str) -> None:
        self._child(self.alerts_received, status).inc()


def create_metrics() -> Metrics:
    # The *_created series only add noise to every counter; this is a process-wide switch.
    disable_created_metrics()  # type: ignore[no-untyped-call]
    registry = CollectorRegistry(auto_describe=True)
    Info("remediator_build", "Version of the remediator.", registry=registry).info({"version": __version__})
    return Metrics(
        registry=registry,
        webhook_requests=Counter(
            "remediator_webhook_requests",
            "Webhook requests answered, by HTTP status code.",
            ["code"],
            registry=registry,
        ),
        alerts_received=Counter(
            "remediator_alerts_received", "Alerts accepted and stored, by alert status.", ["status"], registry=registry
        ),
        store_commit_seconds=Histogram(
            "remediator_store_commit_seconds",
            "Time from submitting a notification to its durable commit.",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=registry,
        ),
        config_last_reload_successful=Gauge(
            "remediator_config_last_reload_successful",
            "Whether the last configuration reload attempt was successful.",
            registry=registry,
        ),
        config_last_reload_success_timestamp=Gauge(
            "remediator_config_last_reload_success_timestamp_seconds",
            "Timestamp of the last successful configuration reload.",
            registry=registry,
        ),
        admission_decisions=Counter(
            "remediator_admission_decisions",
            "Admission decisions for (rule, alert) pairs, by decision and reason.",
            ["rule", "decision", "reason"],
            registry=registry,
        ),
        executions=Counter(
            "remediator_executions",
            "Executions finished, by outcome.",
            ["rule", "playbook", "outcome"],
            registry=registry,
        ),
        execution_duration_seconds=Histogram(
            "remediator_execution_duration_seconds",
            "Time from an execution's start to its outcome.",
            ["rule", "outcome"],
            buckets=(1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600),
            registry=registry,
        ),
        escalation_deliveries=Counter(
            "remediator_escalation_deliveries",
            "Escalation messages sent, by channel and result (delivered, failed, abandoned, resent, resend_failed).",
            ["channel", "result"],
            registry=registry,
        ),
        escalation_delivery_failures=Counter(
            "remediator_escalation_delivery_failures",
            "Failed attempts to send an escalation message (each retry counts), by channel.",
            ["channel"],
            registry=registry,
        ),
    )
