"""``exec`` step: run one program with an argv list, never through a shell."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator

from service.steps import StepSpecBase

# Environment variable names we accept in ``env``; anything else is a typo or an attempt to smuggle
# an ``=`` into the environment block.
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class Spec(StepSpecBase):
    """Run ``argv`` as a new process group; succeed when the exit code is in ``expect_exit``.

    ``argv[0]`` is looked up on a fixed safe ``PATH`` (or is a path, relative to ``cwd``). Alert labels
    and annotations reach the program as ``ALERT_LABEL_<NAME>`` / ``ALERT_ANNOTATION_<NAME>`` and the
    execution id as ``REMEDIATOR_EXECUTION_ID``.
    """

    type: Literal["exec"]
    argv: list[str] = Field(min_length=1, description="program and its arguments, one element each")
    env: dict[str, str] = Field(default_factory=dict, description="extra environment variables")
    cwd: str | None = None
    expect_exit: list[int] = Field(default_factory=lambda: [0], min_length=1)
    inherit_env: bool = Field(
        default=True, description="start from the service's environment (minus its own secrets)"
    )

    @field_validator("argv")
    @classmethod
    def _program_named(cls, argv: list[str]) -> list[str]:
        if not argv[0]:
            raise ValueError("argv[0] (the program) must not be empty")
        return argv

    @field_validator("env")
    @classmethod
    def _env_names(cls, env: dict[str, str]) -> dict[str, str]:
        for name in env:
            if not _ENV_NAME.match(name):
                raise ValueError(f"invalid environment variable name {name!r}")
            if name == "PATH":
                # PATH is fixed so a rendered value can never redirect argv[0]; name the program by path.
                raise ValueError("PATH cannot be set; give argv[0] as an absolute path instead")
        return env
