"""What admission answers for one (rule, alert occurrence): the decision and why."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Decision = Literal["run", "queue", "repeat", "refuse", "shadow"]


@dataclass(frozen=True)
class Verdict:
    decision: Decision
    reason: str  # a short machine-friendly key: cooldown, budget_spent, busy, storm, ...
    detail: str  # one readable sentence for the report
    existing_execution: str | None = None
    # Which run of the rule for this occurrence a run, queue or shadow decision makes (the store's
    # unique key: a decision that raced another one to the same number becomes a repeat).
    occurrence_run: int = 1

    def to_dict(self) -> dict[str, str]:
        """The decision, its reason and its sentence, JSON-able (simulate and explain show it)."""
        return {"decision": self.decision, "reason": self.reason, "detail": self.detail}
