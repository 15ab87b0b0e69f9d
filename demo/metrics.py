"""The simulated router's Prometheus metrics, named as in the T-OPS-04 runbook.

Each router instance owns its own :class:`CollectorRegistry`, so several routers (and tests) can run
in one process without colliding in prometheus-client's global registry.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from demo.simulation import BREAKER_STATE_VALUE, Breaker, Outcome


class RouterMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.nats_connection_status = Gauge(
            "router_nats_connection_status", "1 while the NATS client is connected, else 0", registry=r
        )
        self.nats_reconnects = Counter(
            "router_nats_reconnects", "NATS connections re-established after a loss", registry=r
        )
        self.nats_server_up = Gauge(
            "router_nats_server_up",
            "1 when the NATS monitoring /healthz (JetStream included) answers ok, else 0",
            registry=r,
        )
        self.breaker_state = Gauge(
            "router_circuit_breaker_state",
            "circuit breaker state: 0 closed, 1 open, 2 half_open",
            ["tenant", "provider"],
            registry=r,
        )
        self.breaker_transitions = Counter(
            "router_circuit_breaker_transitions",
            "circuit breaker state changes, by the state entered",
            ["tenant", "provider", "to"],
            registry=r,
        )
        self.provider_latency_p95 = Gauge(
            "router_provider_latency_p95_ms",
            "p95 of the provider's last 200 request latencies, milliseconds",
            ["provider"],
            registry=r,
        )
        self.provider_errors = Counter(
            "router_provider_errors", "requests the provider failed", ["provider"], registry=r
        )
        self.provider_requests = Counter(
            "router_provider_requests", "requests sent to the provider", ["provider"], registry=r
        )
        self.requests = Counter(
            "router_requests", "requests answered by the router, by HTTP status code", ["code"], registry=r
        )
        self.request_duration = Histogram(
            "router_request_duration_seconds",
            "time to answer a request, seconds",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
            registry=r,
        )
        self.consumer_pending = Gauge(
            "router_jetstream_consumer_pending",
            "messages in the stream not yet delivered to the consumer (num_pending)",
            ["stream", "consumer"],
            registry=r,
        )
        self.consumer_ack_pending = Gauge(
            "router_jetstream_consumer_ack_pending",
            "messages delivered to the consumer and not yet acknowledged (num_ack_pending)",
            ["stream", "consumer"],
            registry=r,
        )
        self.messages_processed = Counter(
            "router_jetstream_messages_processed",
            "messages the consumer processed and acknowledged",
            ["stream", "consumer"],
            registry=r,
        )
        self.subscriber_up = Gauge(
            "router_nats_subscriber_up",
            "1 while the router_nats_subscriber task is alive (even if stalled), 0 after it crashed",
            registry=r,
        )
        self.memory_bytes = Gauge(
            "router_memory_bytes",
            "memory the router's VM holds (erlang:memory(total)): a base, plus what the memory fault leaks",
            registry=r,
        )
        self.load_published = Counter(
            "router_demo_load_published",
            "messages the demo load generator published (it stands in for the Gateway)",
            registry=r,
        )

    def set_breaker(self, breaker: Breaker) -> None:
        self.breaker_state.labels(breaker.tenant, breaker.provider).set(BREAKER_STATE_VALUE[breaker.state])

    def record(self, outcome: Outcome) -> None:
        self.requests.labels(str(outcome.code)).inc()
        self.request_duration.observe(outcome.latency_ms / 1000.0)
        if outcome.reached_provider:
            self.provider_requests.labels(outcome.provider).inc()
            if outcome.code != 200:
                self.provider_errors.labels(outcome.provider).inc()
        if outcome.transition is not None:
            entered = outcome.transition[1].value
            self.breaker_transitions.labels(outcome.tenant, outcome.provider, entered).inc()
