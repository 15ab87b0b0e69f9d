"""Prometheus metrics, one registry per app (no process globals, so tests can run several apps)."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from service import __version__


class WebhookMetrics(Collector):
    """The webhook's per-request numbers, kept as plain counts and exported at scrape time.

    prometheus_client's metrics take a lock and do a few calls on every update, several times per
    request on the receiver's hot path. These are only updated on the event loop (one thread), and
    /metrics reads them there too, so plain numbers do; the exposition is a Counter's and a
    Histogram's.
    """

    def __init__(self, commit_buckets: Sequence[float]) -> None:
        self._requests: dict[int, int] = {}
        self._alerts: dict[tuple[str, str], int] = {}  # (status, source)
        self._commit_bounds = (*sorted(commit_buckets), float("inf"))
        self._commit_counts = [0] * len(self._commit_bounds)
        self._commit_sum = 0.0
        self._remembered = 0

    def count_remembered(self) -> None:
        self._remembered += 1

    def count_request(self, code: int) -> None:
        self._requests[code] = self._requests.get(code, 0) + 1

    def count_alert(self, status: str, source: str = "webhook") -> None:
        key = (status, source)
        self._alerts[key] = self._alerts.get(key, 0) + 1

    def observe_commit(self, seconds: float) -> None:
        self._commit_counts[bisect_left(self._commit_bounds, seconds)] += 1  # bucket `le`: value <= bound
        self._commit_sum += seconds

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "remediator_webhook_requests", "Webhook requests answered, by HTTP status code.", labels=["code"]
        )
        for code, count in sorted(self._requests.items()):
            requests.add_metric([str(code)], count)
        yield requests
        alerts = CounterMetricFamily(
            "remediator_alerts_received",
            "Alerts accepted and stored, by alert status and by how they came (webhook or reconcile).",
            labels=["status", "source"],
        )
        for (status, source), count in sorted(self._alerts.items()):
            alerts.add_metric([status, source], count)
        yield alerts
        remembered = CounterMetricFamily(
            "remediator_webhook_remembered_notifications",
            "Notifications acknowledged from memory, without a commit: every alert a pure re-send of an"
            " occurrence already committed (their deliveries are written within a second).",
        )
        remembered.add_metric([], self._remembered)
        yield remembered
        cumulative, buckets = 0, []
        for bound, count in zip(self._commit_bounds, self._commit_counts, strict=True):
            cumulative += count
            buckets.append((floatToGoString(bound), cumulative))  # type: ignore[no-untyped-call]
        yield HistogramMetricFamily(
            "remediator_store_commit_seconds",
            "Time from submitting a notification to its durable commit.",
            buckets=buckets,
            sum_value=self._commit_sum,
        )


class ReconcileMetrics:
    """The reconciler's passes and what each configured Alertmanager answered (a bounded label set:
    the configured URLs)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.passes = Counter(
            "remediator_reconcile_passes",
            "Reconciliation passes, by result: ok (every Alertmanager answered) or error.",
            ["result"],
            registry=registry,
        )
        self.alertmanager_up = Gauge(
            "remediator_alertmanager_up",
            "Whether the last request of the reconciler to this Alertmanager succeeded (1) or not (0).",
            ["url"],
            registry=registry,
        )
        self.last_success = Gauge(
            "remediator_reconcile_last_success_timestamp_seconds",
            "When the last pass that every Alertmanager answered finished.",
            registry=registry,
        )
        for result in ("ok", "error"):
            self.passes.labels(result)

    def alertmanager_answered(self, url: str, up: bool) -> None:
        self.alertmanager_up.labels(url).set(1 if up else 0)

    def pass_finished(self, ok: bool, at: datetime) -> None:
        self.passes.labels("ok" if ok else "error").inc()
        if ok:
            self.last_success.set(at.timestamp())


class UnmatchedMetrics:
    """Alerts no rule matched, by alertname: the first MAX_ALERTNAMES names seen get a series each,
    later ones count as "other", so a flood of new alertnames cannot grow the scrape without bound."""

    MAX_ALERTNAMES = 50
    OTHER = "other"

    def __init__(self, registry: CollectorRegistry) -> None:
        self.counter = Counter(
            "remediator_alerts_unmatched",
            "Alert occurrences no rule matched, counted when first received, by alertname "
            f'(the first {self.MAX_ALERTNAMES} names; later ones as "{self.OTHER}").',
            ["alertname"],
            registry=registry,
        )
        self._series: dict[str, Counter] = {}  # alertname -> its child; labels() costs a lock and a few calls

    def count(self, alertname: str) -> None:
        series = self._series.get(alertname)
        if series is None:
            if len(self._series) < self.MAX_ALERTNAMES:
                series = self._series[alertname] = self.counter.labels(alertname)
            else:
                series = self.counter.labels(self.OTHER)
        series.inc()


@dataclass(frozen=True)
class Metrics:
    registry: CollectorRegistry
    webhook: WebhookMetrics
    config_last_reload_successful: Gauge
    config_last_reload_success_timestamp: Gauge
    admission_decisions: Counter
    executions: Counter
    execution_duration_seconds: Histogram
    escalation_deliveries: Counter
    escalation_delivery_failures: Counter
    reconcile: ReconcileMetrics
    unmatched: UnmatchedMetrics


def create_metrics() -> Metrics:
    # The *_created series only add noise to every counter; this is a process-wide switch.
    disable_created_metrics()  # type: ignore[no-untyped-call]
    registry = CollectorRegistry(auto_describe=True)
    Info("remediator_build", "Version of the remediator.", registry=registry).info({"version": __version__})
    webhook = WebhookMetrics(commit_buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5))
    registry.register(webhook)
    return Metrics(
        registry=registry,
        webhook=webhook,
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
        reconcile=ReconcileMetrics(registry),
        unmatched=UnmatchedMetrics(registry),
    )
