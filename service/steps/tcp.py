"""``tcp`` step: a port accepts connections (the runbook's ``nc -zv localhost 9000``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from service.steps import StepSpecBase


class Spec(StepSpecBase):
    """Succeed when a TCP connection to ``host:port`` is accepted within ``timeout``."""

    type: Literal["tcp"]
    host: str = "127.0.0.1"
    port: int = Field(ge=1, le=65535)
    timeout: float = Field(default=5.0, gt=0, le=3600)
