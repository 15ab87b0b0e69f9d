"""The process groups of running steps, kept in the store so a crash cannot leave one behind.

A step's group is recorded as it starts (before the step waits on it) and forgotten when it ends;
whatever is still recorded at start-up belonged to a step that was running when the service died.
Recovery ends those groups (TERM, then KILL) before it resumes or escalates their run, so an old
`nats_start.sh` can never run on beside the resumed run's own.
"""

from __future__ import annotations

from dataclasses import dataclass

from service.clock import Clock
from service.steps.groups import boot_id, end_group, leader_start, still_ours
from service.store import DispatchStore, ExecutionStore, StepProcess


@dataclass(frozen=True)
class StepProcesses:
    """service.steps.ProcessRecorder for one step of one run."""

    store: ExecutionStore
    clock: Clock
    execution_id: str
    step: str

    async def started(self, pgid: int) -> None:
        process = StepProcess(self.execution_id, self.step, pgid, boot_id(), leader_start(pgid))
        await self.store.record_process(process, self.clock.now())

    async def ended(self, pgid: int) -> None:
        await self.store.forget_process(self.execution_id, pgid)


async def end_leftovers(store: DispatchStore, execution_id: str) -> list[str]:
    """End the groups of the run's steps that were running when the service stopped; what was done,
    one line each for the run's timeline."""
    done = []
    for process in await store.step_processes(execution_id):
        if still_ours(process.pgid, process.boot_id, process.leader_start):
            signal = await end_group(process.pgid)
            if signal is not None:
                done.append(
                    f"step {process.step} was still running after the restart: its process group"
                    f" {process.pgid} ended ({signal})"
                )
        await store.forget_process(execution_id, process.pgid)
    return done
