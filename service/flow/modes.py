"""Concurrency modes: what a rule's `limits.concurrency` does when a run for the same target is
already active. Admission, the dispatcher and the executor each act on the mode; what each mode
means is said here, once (as Home Assistant's script run modes are):

    single    the new run is refused (busy) while one is active
    parallel  runs go side by side up to max_parallel, then the new one is refused (busy)
    restart   the new run is admitted and cancels the active ones (once it is recorded)
    queued    the new run waits its turn behind the active ones, up to max_queue of them, then is
              refused (queue_full); every run of the target takes its turn, the first one included

With no run active every mode admits.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from service.flow.verdict import Verdict
from service.rules.ruleset import RuleMatch


def when_active(match: RuleMatch, active: int) -> Verdict | None:
    """Admission's answer while `active` runs are active for the match's target (None: admitted)."""
    limits = match.rule.rule.limits
    target = match.target
    if limits.concurrency == "single":
        return Verdict("refuse", "busy", f"a run for {target} is already active (concurrency: single)")
    if limits.concurrency == "parallel" and active >= limits.max_parallel:
        return Verdict("refuse", "busy", f"{active} runs active for {target} (max_parallel)")
    if limits.concurrency == "restart":
        return Verdict("run", "restart", f"restart mode: cancels the {active} active run(s) for {target}")
    if limits.concurrency == "queued":
        if active > limits.max_queue:
            return Verdict("refuse", "queue_full", f"queue for {target} is full (max_queue)")
        return Verdict("queue", "queued", f"queued behind {active} active run(s) for {target}")
    return None


def supersedes(verdict: Verdict) -> bool:
    """Restart mode: the admitted run cancels the target's other active runs."""
    return verdict.reason == "restart"


def takes_turns(match: RuleMatch) -> bool:
    """Queued mode: each run of the target waits for the target's lock (TargetLocks) before it runs."""
    return match.rule.rule.limits.concurrency == "queued"


@dataclass
class _SharedLock:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0  # holding it or waiting for it


class TargetLocks:
    """Queued mode's turns: one lock per (rule, target), kept only while someone holds or waits for
    it, so the map does not grow with every target ever seen."""

    def __init__(self) -> None:
        self._locks: dict[tuple[str, str], _SharedLock] = {}

    def __len__(self) -> int:
        return len(self._locks)

    @contextlib.asynccontextmanager
    async def hold(self, rule: str, target: str) -> AsyncIterator[None]:
        key = (rule, target)
        shared = self._locks.setdefault(key, _SharedLock())
        shared.users += 1
        try:
            async with shared.lock:
                yield
        finally:  # also when cancelled while waiting
            shared.users -= 1
            if shared.users == 0:
                del self._locks[key]

    def turn(self, rule: str, target: str, queued: bool) -> contextlib.AbstractAsyncContextManager[None]:
        """The run's turn: the target's lock for a queued run, none otherwise."""
        return self.hold(rule, target) if queued else contextlib.nullcontext()
