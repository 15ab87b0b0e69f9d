"""Every step type by name, control steps included, so the executor finds each the same way; the
I/O steps' Spec models and a discriminated union of them for models that embed one."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import Field

from service.steps import StepContext, StepOutcome, StepSpecBase, control
from service.steps import exec as exec_step
from service.steps import http as http_step
from service.steps import nats as nats_step
from service.steps import promql as promql_step
from service.steps import ssh as ssh_step
from service.steps import tcp as tcp_step


@dataclass(frozen=True)
class StepType:
    # Any: each runner takes its own Spec; run_step below is the typed way in.
    run: Callable[[Any, StepContext], Awaitable[StepOutcome]]
    # "io": the step enforces its own timeout and the executor adds a backstop; "control": it acts
    # on the run (service.steps.control), under the playbook's timeout only.
    kind: Literal["io", "control"]
    # An I/O step's model; a control step's is part of the playbook format (service.playbooks.playbook).
    spec: type[StepSpecBase] | None = None


STEP_TYPES: Mapping[str, StepType] = {
    "exec": StepType(exec_step.run, "io", exec_step.Spec),
    "ssh": StepType(ssh_step.run, "io", ssh_step.Spec),
    "http": StepType(http_step.run, "io", http_step.Spec),
    "tcp": StepType(tcp_step.run, "io", tcp_step.Spec),
    "promql": StepType(promql_step.run, "io", promql_step.Spec),
    "nats": StepType(nats_step.run, "io", nats_step.Spec),
    "wait": StepType(control.wait, "control"),
    "escalate": StepType(control.escalate, "control"),
    "approval": StepType(control.approval, "control"),
    "rolling": StepType(control.rolling, "control"),
    "alert_resolved": StepType(control.alert_resolved, "control"),
    "alert_expr": StepType(control.alert_expr, "control"),
}

# For pydantic models that embed a step: ``steps: list[IoStepSpec]`` picks the model by ``type``.
IoStepSpec = Annotated[
    exec_step.Spec | ssh_step.Spec | http_step.Spec | tcp_step.Spec | promql_step.Spec | nats_step.Spec,
    Field(discriminator="type"),
]


async def run_step(
    spec: exec_step.Spec | ssh_step.Spec | http_step.Spec | tcp_step.Spec | promql_step.Spec | nats_step.Spec,
    ctx: StepContext,
) -> StepOutcome:
    """Run one I/O step with the runner of its type."""
    return await STEP_TYPES[spec.type].run(spec, ctx)
