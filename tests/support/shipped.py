"""What the shipped configuration holds, for the tests that check it."""

# The alerts alertmanager/router-alerts.yml defines (T-OPS-04 section 3).
EXPECTED_ALERTS = {
    "NatsServerDown",
    "NatsConnectionLost",
    "RouterNatsConnectionFlapping",
    "JetStreamConsumerBacklogRising",
    "StuckQueue",
    "CircuitBreakerOpen",
    "HighLatency",
    "RateLimited429",
    "CircuitBreaker503",
    "RouterDown",
}
