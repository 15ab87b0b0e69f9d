"""The dispatcher's retry bookkeeping: alert events whose dispatch failed, and when to try again.

A failed event stays in the store's queue (also across a restart) and is tried again after 1, 2,
4 ... s, at most 5 min apart; after ESCALATE_AFTER failures a person is told, once, and the retries
go on. Only the schedule lives here, in memory: a restart tries every queued event at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

RETRY_FIRST_S = 1.0
RETRY_MAX_S = 300.0
ESCALATE_AFTER = 5


@dataclass
class Retry:
    """An event whose dispatch failed: how often, when to try again, whether a person was told."""

    attempts: int
    due: datetime
    escalated: bool = False

    @property
    def delay_s(self) -> float:
        """How long this retry waits after the failure that scheduled it."""
        return _delay(self.attempts)

    @property
    def to_escalate(self) -> bool:
        """Failed often enough that a person must be told, and nobody was yet."""
        return self.attempts >= ESCALATE_AFTER and not self.escalated


def _delay(attempts: int) -> float:
    return min(RETRY_MAX_S, RETRY_FIRST_S * 2.0 ** (attempts - 1))


class Retries:
    """The scheduled retries, by event id."""

    def __init__(self) -> None:
        self._retries: dict[int, Retry] = {}

    def __len__(self) -> int:
        return len(self._retries)

    def get(self, event_id: int) -> Retry | None:
        return self._retries.get(event_id)

    def waiting(self, event_id: int, now: datetime) -> bool:
        """The event failed before and its next try is not due yet."""
        retry = self._retries.get(event_id)
        return retry is not None and retry.due > now

    def failed(self, event_id: int, now: datetime) -> Retry:
        """Schedule the next try of an event whose dispatch just failed."""
        previous = self._retries.get(event_id)
        attempts = 1 if previous is None else previous.attempts + 1
        retry = Retry(attempts, now + timedelta(seconds=_delay(attempts)), previous is not None and previous.escalated)
        self._retries[event_id] = retry
        return retry

    def succeeded(self, event_id: int) -> None:
        self._retries.pop(event_id, None)

    def next_due(self) -> datetime | None:
        return min((retry.due for retry in self._retries.values()), default=None)
