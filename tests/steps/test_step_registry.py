"""The step registry: names, the discriminated union, and dispatch."""

from __future__ import annotations

import sys
from typing import get_args

import pytest
from pydantic import TypeAdapter, ValidationError

from service.errors import StepError
from service.playbooks.playbook import Check, EscalateStep, Step
from service.steps import StepContext
from service.steps.exec import Spec as ExecSpec
from service.steps.registry import STEP_TYPES, IoStepSpec, run_step

ADAPTER: TypeAdapter[IoStepSpec] = TypeAdapter(IoStepSpec)


def test_every_type_is_registered_under_its_discriminator() -> None:
    io = {"exec", "ssh", "http", "tcp", "promql", "nats"}
    control = {"wait", "escalate", "approval", "rolling", "alert_resolved", "alert_expr"}
    assert set(STEP_TYPES) == io | control
    for name, step_type in STEP_TYPES.items():
        assert step_type.kind == ("io" if name in io else "control")
        if name in io:
            assert step_type.spec is not None
            assert step_type.spec.model_fields["type"].annotation.__args__ == (name,)  # type: ignore[union-attr]
        else:  # the playbook format's model (the next test)
            assert step_type.spec is None


def test_every_step_and_check_of_the_playbook_format_is_found_in_the_registry() -> None:
    models = {model for union in (Step, Check) for model in get_args(get_args(union)[0])}
    assert len(models) == 12
    for model in models:
        (name,) = model.model_fields["type"].annotation.__args__
        assert STEP_TYPES[name].spec in (model, None)


async def test_a_control_step_outside_a_run_is_a_step_error() -> None:
    with pytest.raises(StepError, match="needs the run"):
        await STEP_TYPES["escalate"].run(EscalateStep(type="escalate", reason="r"), StepContext(execution_id="r"))


def test_union_picks_the_model_by_type() -> None:
    spec = ADAPTER.validate_python({"type": "tcp", "port": 9000})
    assert type(spec) is STEP_TYPES["tcp"].spec
    with pytest.raises(ValidationError, match="does not match any of the expected tags"):
        ADAPTER.validate_python({"type": "shell", "command": "rm -rf /"})
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        ADAPTER.validate_python({"type": "exec", "argv": ["true"], "shell": True})


async def test_run_step_dispatches() -> None:
    out = await run_step(
        ExecSpec(type="exec", argv=[sys.executable, "-c", "print('hi')"]), StepContext(execution_id="r")
    )
    assert (out.ok, out.output) == (True, "hi\n")
