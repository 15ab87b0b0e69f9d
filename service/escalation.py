"""Escalation: when automation cannot fix it, a person must know at once, with the facts.

Every escalation is recorded on its execution's timeline first (so the report shows it even if no
channel is reachable).
"""

from __future__ import annotations

import logging

from service.clock import Clock
from service.store import SQLiteStore

log = logging.getLogger("remediator.escalation")


class Escalator:
    def __init__(self, store: SQLiteStore, clock: Clock, external_url: str) -> None:
        self._store = store
        self._clock = clock
        self._external_url = external_url

    def report_url(self, execution_id: str) -> str:
        return f"{self._external_url}/executions/{execution_id}"

    async def escalate(self, execution_id: str, reason: str, severity: str) -> None:
        await self._store.add_event(
            execution_id,
            self._clock.now(),
            "escalation",
            reason,
            {"severity": severity, "report_url": self.report_url(execution_id)},
        )
        log.warning("escalated", extra={"execution_id": execution_id, "reason": reason, "severity": severity})
