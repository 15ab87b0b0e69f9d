"""The webhook's hot-path metrics: plain counts, exposed as Prometheus counters and a histogram."""

from __future__ import annotations

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from service.metrics import create_metrics


def _samples() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    metrics = create_metrics()
    for seconds in (0.0001, 0.0005, 0.0007, 0.003, 3.0):
        metrics.webhook.observe_commit(seconds)
    for code in (200, 200, 400, 503):
        metrics.webhook.count_request(code)
    metrics.webhook.count_alert("firing")
    metrics.webhook.count_alert("firing", "reconcile")
    metrics.webhook.count_alert("firing", "reconcile")
    text = generate_latest(metrics.registry).decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_commit_histogram_buckets_are_cumulative_and_inclusive() -> None:
    samples = _samples()

    def bucket(le: str) -> float:
        return samples[("remediator_store_commit_seconds_bucket", (("le", le),))]

    # A value equal to a bound counts in that bound's bucket (Prometheus's `le`).
    assert bucket("0.0005") == 2
    assert bucket("0.001") == 3
    assert bucket("0.005") == 4
    assert bucket("2.5") == 4
    assert bucket("+Inf") == 5
    assert samples[("remediator_store_commit_seconds_count", ())] == 5
    assert abs(samples[("remediator_store_commit_seconds_sum", ())] - 3.0043) < 1e-9


def test_request_and_alert_counters_by_label() -> None:
    samples = _samples()
    assert samples[("remediator_webhook_requests_total", (("code", "200"),))] == 2
    assert samples[("remediator_webhook_requests_total", (("code", "400"),))] == 1
    assert samples[("remediator_webhook_requests_total", (("code", "503"),))] == 1
    received = "remediator_alerts_received_total"
    assert samples[(received, (("source", "webhook"), ("status", "firing")))] == 1
    assert samples[(received, (("source", "reconcile"), ("status", "firing")))] == 2
    assert (received, (("source", "webhook"), ("status", "resolved"))) not in samples


def test_unmatched_alerts_are_counted_by_alertname_with_a_bounded_label_set() -> None:
    metrics = create_metrics()
    limit = metrics.unmatched.MAX_ALERTNAMES
    for n in range(limit + 10):
        metrics.unmatched.count(f"Alert{n}")
    metrics.unmatched.count("Alert0")  # a name already counted keeps its own series
    text = generate_latest(metrics.registry).decode()
    counts = {
        sample.labels["alertname"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "remediator_alerts_unmatched_total"
    }
    assert len(counts) == limit + 1
    assert (counts["Alert0"], counts["Alert1"], counts["other"]) == (2, 1, 10)
    assert f"Alert{limit}" not in counts
