"""What the flow needs from the rest of the service, each named by a small Protocol.

The dispatcher and the executor take these as keyword arguments instead of anonymous callables:
- `Escalation`: a person is told (service.escalation.escalator.Escalator is one, structurally);
- `DecisionObserver` and `RunObserver`: each admission decision and each finished run is counted
  (`FlowMetrics` counts them in the service's Prometheus metrics);
- `PauseSource`: automation paused from outside (service.flow.silences.SilenceWatcher: silences).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Protocol

from service.metrics import Metrics


class Escalation(Protocol):
    """Tells a person: a run failed or was refused, an approval is wanted or was given, the alert
    behind open escalations resolved."""

    async def escalate(self, execution_id: str, reason: str, severity: str) -> None: ...
    async def approval_requested(self, execution_id: str, prompt: str, deadline: datetime) -> None: ...
    async def approval_decided(self, execution_id: str, decision: str, by: str) -> None: ...
    async def original_resolved(self, occurrence_id: int) -> object: ...


class DecisionObserver(Protocol):
    def admission_decided(self, rule: str, decision: str, reason: str) -> None: ...


class RunObserver(Protocol):
    def execution_finished(self, rule: str, playbook: str, outcome: str, seconds: float) -> None: ...


class Pause(Protocol):
    def describe(self) -> str: ...


class PauseSource(Protocol):
    def pause_for(self, labels: Mapping[str, str]) -> Pause | None: ...


class FlowMetrics:
    """Admission decisions and finished runs, counted in the service's metrics."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def admission_decided(self, rule: str, decision: str, reason: str) -> None:
        self._metrics.admission_decisions.labels(rule, decision, reason).inc()

    def execution_finished(self, rule: str, playbook: str, outcome: str, seconds: float) -> None:
        self._metrics.executions.labels(rule, playbook, outcome).inc()
        self._metrics.execution_duration_seconds.labels(rule, outcome).observe(seconds)
