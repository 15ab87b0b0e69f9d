"""A stand-in for the escalator in flow tests: it records what the flow escalates (channels are not
under test). An approval request is escalated as the escalator words it."""

from __future__ import annotations

from datetime import datetime


class RecordingEscalation:
    """service.flow.ports.Escalation, structurally: escalations land in `escalations`."""

    def __init__(self) -> None:
        self.escalations: list[tuple[str, str, str]] = []  # (execution_id, reason, severity)
        self.resolved: list[int] = []  # occurrence ids

    async def escalate(self, execution_id: str, reason: str, severity: str) -> None:
        self.escalations.append((execution_id, reason, severity))

    async def approval_requested(self, execution_id: str, prompt: str, deadline: datetime) -> None:
        await self.escalate(execution_id, f"approval needed: {prompt}", "warning")

    async def approval_decided(self, execution_id: str, decision: str, by: str) -> None:
        return None

    async def original_resolved(self, occurrence_id: int) -> None:
        self.resolved.append(occurrence_id)
