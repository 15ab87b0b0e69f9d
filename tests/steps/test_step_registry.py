"""The step registry: names, the discriminated union, and dispatch."""

from __future__ import annotations

import sys

import pytest
from pydantic import TypeAdapter, ValidationError

from service.steps import StepContext
from service.steps.exec import Spec as ExecSpec
from service.steps.registry import STEP_TYPES, IoStepSpec, run_step

ADAPTER: TypeAdapter[IoStepSpec] = TypeAdapter(IoStepSpec)


def test_every_type_is_registered_under_its_discriminator() -> None:
    assert set(STEP_TYPES) == {"exec", "http", "tcp", "promql", "nats"}
    for name, step_type in STEP_TYPES.items():
        assert step_type.spec.model_fields["type"].annotation.__args__ == (name,)  # type: ignore[union-attr]


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
