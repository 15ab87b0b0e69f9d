"""The I/O step types by name: their Spec models, a discriminated union of them, and one dispatcher."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import Field

from service.steps import StepContext, StepOutcome, StepSpecBase
from service.steps import exec as exec_step
from service.steps import http as http_step
from service.steps import nats as nats_step
from service.steps import promql as promql_step
from service.steps import tcp as tcp_step


@dataclass(frozen=True)
class StepType:
    spec: type[StepSpecBase]
    # Any: each runner takes its own Spec; run_step below is the typed way in.
    run: Callable[[Any, StepContext], Awaitable[StepOutcome]]


STEP_TYPES: Mapping[str, StepType] = {
    "exec": StepType(exec_step.Spec, exec_step.run),
    "http": StepType(http_step.Spec, http_step.run),
    "tcp": StepType(tcp_step.Spec, tcp_step.run),
    "promql": StepType(promql_step.Spec, promql_step.run),
    "nats": StepType(nats_step.Spec, nats_step.run),
}

# For pydantic models that embed a step: ``steps: list[IoStepSpec]`` picks the model by ``type``.
IoStepSpec = Annotated[
    exec_step.Spec | http_step.Spec | tcp_step.Spec | promql_step.Spec | nats_step.Spec,
    Field(discriminator="type"),
]


async def run_step(
    spec: exec_step.Spec | http_step.Spec | tcp_step.Spec | promql_step.Spec | nats_step.Spec,
    ctx: StepContext,
) -> StepOutcome:
    """Run one I/O step with the runner of its type."""
    return await STEP_TYPES[spec.type].run(spec, ctx)
