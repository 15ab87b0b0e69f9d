"""Approvals: the runs waiting for a person's decision, and the wait itself.

An approval step persists its request, tells the escalation (approve/deny links), then waits for a
decision through the API or the pages, or for its deadline, which denies. A run resumed after a
restart finds its still-pending request and keeps its first deadline.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from service.clock import Clock
from service.flow.ports import Escalation
from service.steps import StepOutcome
from service.store import ExecutionState, ExecutionStore


class Approvals:
    """Pending approval decisions, by execution id (the API resolves them)."""

    def __init__(self, store: ExecutionStore, clock: Clock, escalation: Escalation) -> None:
        self._store = store
        self._clock = clock
        self._escalation = escalation
        self._pending: dict[str, asyncio.Future[tuple[bool, str]]] = {}

    def decide(self, execution_id: str, approved: bool, who: str) -> bool:
        future = self._pending.pop(execution_id, None)
        if future is None or future.done():
            return False
        future.set_result((approved, who))
        return True

    def pending(self, execution_id: str) -> bool:
        return execution_id in self._pending

    def forget(self, execution_id: str) -> None:
        self._pending.pop(execution_id, None)

    async def wait(self, execution_id: str, step: str, prompt: str, timeout_s: float) -> StepOutcome:
        """Persist the request, escalate it, wait for a decision or the deadline, persist the decision."""
        decision = asyncio.get_running_loop().create_future()
        self._pending[execution_id] = decision  # before the state says it waits
        store, now = self._store, self._clock.now()
        pending = await store.open_approval(execution_id, step, prompt, now, now + timedelta(seconds=timeout_s))
        await store.set_state(execution_id, ExecutionState.AWAITING_APPROVAL, now, prompt)
        await self._escalation.approval_requested(execution_id, prompt, pending.deadline)
        try:
            remaining = (pending.deadline - self._clock.now()).total_seconds()
            approved, who = await asyncio.wait_for(decision, max(0.0, remaining))
        except TimeoutError:
            approved, who = False, f"timeout after {timeout_s:g}s"
        finally:
            # Cancelled (shutdown, resolved alert): the request stays pending in the store. A resumed
            # run picks it up again; the escalator settles it once the execution has ended.
            self.forget(execution_id)
        verdict = "approved" if approved else "denied"
        if await store.decide_approval(pending.id, verdict, who, self._clock.now()):
            await self._escalation.approval_decided(execution_id, verdict, who)
        await store.add_event(
            execution_id, self._clock.now(), "approval", f"{verdict} by {who}", {"approved": approved, "by": who}
        )
        await store.set_state(execution_id, ExecutionState.RUNNING, self._clock.now(), f"{verdict} by {who}")
        return StepOutcome(
            ok=approved,
            status="ok" if approved else "failed",
            summary=f"{verdict} by {who}",
            data={"approved": approved, "by": who},
        )
