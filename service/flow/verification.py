"""Verification: a playbook's (or a rolling step's) checks polled until all hold or time is up.

Each poll runs every check and puts what each one measured on the run's timeline, so a report shows
how the fix held, or how it did not, poll by poll.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from service.clock import Clock
from service.playbooks.playbook import Verify
from service.playbooks.templating import TemplateError
from service.steps import StepOutcome, StepSpecBase
from service.store import ExecutionStore

log = logging.getLogger("remediator.executor")

# Runs one check, named, rendered in the run's context (the executor's step dispatch).
RunCheck = Callable[[str, StepSpecBase], Awaitable[StepOutcome]]


async def poll(
    store: ExecutionStore, clock: Clock, execution_id: str, phase: str, verify: Verify, run_check: RunCheck
) -> str | None:
    """Poll every check each interval until all hold (None) or `within` passes (the reason)."""
    deadline = time.monotonic() + verify.within
    polls = 0
    while True:
        polls += 1
        # polls start on a fixed cadence: recording a poll does not stretch the interval
        next_poll = time.monotonic() + verify.interval
        results: list[dict[str, Any]] = []
        for index, check in enumerate(verify.checks):
            name = check.name or f"{phase}-{index + 1}-{check.type}"
            started = time.monotonic()
            try:
                outcome = await run_check(name, check)
            except TemplateError as exc:
                outcome = StepOutcome.error(f"template: {exc}")
            except Exception as exc:  # a bad check must fail the poll, not leave the run hanging
                log.exception("check crashed", extra={"execution_id": execution_id, "check": name})
                outcome = StepOutcome.error(f"{type(exc).__name__}: {exc}")
            results.append(
                {
                    "check": name,
                    "ok": outcome.ok,
                    "summary": outcome.summary,
                    "data": dict(outcome.data),
                    "duration_s": round(time.monotonic() - started, 4),
                }
            )
        held = all(r["ok"] for r in results)
        failing = "; ".join(f"{r['check']}: {r['summary']}" for r in results if not r["ok"])
        await store.add_event(
            execution_id,
            clock.now(),
            "verify",
            f"{phase} poll {polls}: " + ("all checks hold" if held else failing),
            {"poll": polls, "phase": phase, "held": held, "checks": results},
        )
        if held:
            return None
        if next_poll > deadline:
            return f"verification did not hold within {verify.within:g}s ({polls} polls): {failing}"
        await asyncio.sleep(max(0.0, next_poll - time.monotonic()))
