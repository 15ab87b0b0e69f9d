"""The router's simulated request traffic: providers, per-tenant circuit breakers, rate limiting.

No real requests are made and nothing sleeps: each :meth:`Simulation.tick` decides the outcome of one
request per tenant and provider and reports it, so the metrics move the way a real router's would.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


# Exported as router_circuit_breaker_state. The runbook reads 1.0 as Open, so 1 must stay "open";
# half-open gets 2 rather than 0.5 so `== 1` in an alert never matches a half-open breaker.
BREAKER_STATE_VALUE: dict[BreakerState, float] = {
    BreakerState.CLOSED: 0.0,
    BreakerState.OPEN: 1.0,
    BreakerState.HALF_OPEN: 2.0,
}


class ProviderHealth(StrEnum):
    HEALTHY = "healthy"
    FAILING = "failing"


@dataclass
class Breaker:
    """One circuit breaker, per tenant and provider, as in router_circuit_breaker."""

    tenant: str
    provider: str
    failure_threshold: int
    half_open_successes_needed: int
    state: BreakerState = BreakerState.CLOSED
    consecutive_failures: int = 0
    half_open_successes: int = 0

    def force(self, state: BreakerState) -> None:
        self.state = state
        self.consecutive_failures = 0
        self.half_open_successes = 0

    def record(self, success: bool) -> None:
        """Account one request that went through to the provider (closed or half-open)."""
        if self.state is BreakerState.HALF_OPEN:
            if not success:
                self.force(BreakerState.OPEN)
                return
            self.half_open_successes += 1
            if self.half_open_successes >= self.half_open_successes_needed:
                self.force(BreakerState.CLOSED)
            return
        if success:
            self.consecutive_failures = 0
            return
        self.consecutive_failures += 1
        if self.consecutive_failures >= self.failure_threshold:
            self.force(BreakerState.OPEN)

    def status(self) -> dict[str, object]:
        return {
            "tenant": self.tenant,
            "provider": self.provider,
            "state": self.state.value,
            "state_value": BREAKER_STATE_VALUE[self.state],
            "consecutive_failures": self.consecutive_failures,
            "half_open_successes": self.half_open_successes,
            "half_open_successes_needed": self.half_open_successes_needed,
        }


@dataclass
class Provider:
    name: str
    base_latency_ms: float
    health: ProviderHealth = ProviderHealth.HEALTHY
    extra_latency_ms: float = 0.0
    # Recent latencies for the p95 gauge; bounded so memory stays flat however long the demo runs.
    recent_ms: deque[float] = field(default_factory=lambda: deque(maxlen=200))

    def p95_ms(self) -> float:
        if not self.recent_ms:
            return 0.0
        ordered = sorted(self.recent_ms)
        return ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]


@dataclass(frozen=True)
class Outcome:
    tenant: str
    provider: str
    code: int  # 200 ok, 429 rate limited, 502 provider error, 503 circuit open (fail fast)
    latency_ms: float
    reached_provider: bool
    transition: tuple[BreakerState, BreakerState] | None


# A failing provider answers slowly (a timeout, in the real router); a fail-fast answer costs ~1 ms.
FAILING_LATENCY_MS = 2500.0
FAIL_FAST_LATENCY_MS = 1.0


class Simulation:
    def __init__(
        self,
        tenants: Iterable[str],
        providers: Iterable[str],
        *,
        base_latency_ms: float,
        failure_threshold: int,
        half_open_successes: int,
        seed: int,
    ) -> None:
        self.providers = {p: Provider(p, base_latency_ms) for p in providers}
        self.breakers = {
            (t, p): Breaker(t, p, failure_threshold, half_open_successes) for t in tenants for p in self.providers
        }
        self.rate_limit_fraction = 0.0
        self._rng = random.Random(seed)

    def tick(self) -> list[Outcome]:
        """One simulated request for every tenant and provider."""
        return [self._request(b) for b in self.breakers.values()]

    def reset_faults(self) -> None:
        self.rate_limit_fraction = 0.0
        for provider in self.providers.values():
            provider.health = ProviderHealth.HEALTHY
            provider.extra_latency_ms = 0.0
        for breaker in self.breakers.values():
            breaker.force(BreakerState.CLOSED)

    def _request(self, breaker: Breaker) -> Outcome:
        provider = self.providers[breaker.provider]
        before = breaker.state
        if self.rate_limit_fraction > 0 and self._rng.random() < self.rate_limit_fraction:
            return Outcome(breaker.tenant, provider.name, 429, FAIL_FAST_LATENCY_MS, False, None)
        if breaker.state is BreakerState.OPEN:
            return Outcome(breaker.tenant, provider.name, 503, FAIL_FAST_LATENCY_MS, False, None)
        success = provider.health is ProviderHealth.HEALTHY
        if success:
            jitter = self._rng.uniform(0.8, 1.2)
            latency = provider.base_latency_ms * jitter + provider.extra_latency_ms
        else:
            latency = FAILING_LATENCY_MS + provider.extra_latency_ms
        provider.recent_ms.append(latency)
        breaker.record(success)
        transition = (before, breaker.state) if breaker.state is not before else None
        return Outcome(breaker.tenant, provider.name, 200 if success else 502, latency, True, transition)
