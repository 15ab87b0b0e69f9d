"""The playbook format: a runbook procedure as typed params, ordered steps, a verification block and
what to do on failure (documented in ``docs/playbooks.md``).

Types only: params are :mod:`service.playbooks.params`, reading and cross-checking files is
:mod:`service.playbooks.loading`. The I/O step models come from ``service.steps.*``; the control
steps (``wait``, ``approval``, ``rolling``, ``escalate``) and the verification-only checks
(``alert_resolved``, ``alert_expr``) are defined here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Self

from pydantic import Field, field_validator, model_validator

from service.models import StrictModel
from service.playbooks.context import PLAYBOOK_VARIABLES
from service.playbooks.params import ParamSpec
from service.playbooks.templating import TemplateEngine
from service.steps import StepSpecBase
from service.steps.exec import Spec as ExecSpec
from service.steps.exec_env import EnvVars
from service.steps.http import Spec as HttpSpec
from service.steps.nats import Spec as NatsSpec
from service.steps.promql import Spec as PromqlSpec
from service.steps.ssh import Spec as SshSpec
from service.steps.tcp import Spec as TcpSpec
from service.times import Duration
from service.yamlload import ConfigError

_NAME_RE = r"^[a-z0-9][a-z0-9_.-]*$"
_IDENT_RE = r"^[A-Za-z_][A-Za-z0-9_]*$"


# --- control steps ---------------------------------------------------------------------------


class WaitStep(StepSpecBase):
    """Sleep ``seconds`` (the executor's clock, so tests do not sleep)."""

    type: Literal["wait"]
    seconds: Duration = Field(gt=0, le=86400)
    timeout: Duration = Field(default=86400, gt=0, le=86400)

    @model_validator(mode="after")
    def _fits(self) -> Self:
        if self.seconds > self.timeout:
            raise ValueError("seconds is longer than the step timeout")
        return self


class ApprovalStep(StepSpecBase):
    """Pause until a human approves through the API/UI; denial or ``timeout`` fails the step."""

    type: Literal["approval"]
    prompt: str = Field(min_length=1)
    timeout: Duration = Field(default=3600, gt=0, le=7 * 86400)


class EscalateStep(StepSpecBase):
    """Escalate to a human with a (templated) reason and continue."""

    type: Literal["escalate"]
    reason: str = Field(min_length=1)
    severity: Literal["info", "warning", "critical", "page"] = "critical"


# --- verification-only checks --------------------------------------------------------------


class AlertResolvedCheck(StepSpecBase):
    """Holds once Alertmanager's resolved notification for the same fingerprint has arrived."""

    type: Literal["alert_resolved"]


class AlertExprCheck(StepSpecBase):
    """Holds once the alert's own expression returns nothing. ``expr`` defaults to the one in the
    alert's ``generatorURL`` (``g0.expr``)."""

    type: Literal["alert_expr"]
    expr: str | None = None
    prometheus_url: str | None = None
    timeout: Duration = Field(default=10.0, gt=0, le=3600)


Check = Annotated[
    ExecSpec | SshSpec | HttpSpec | TcpSpec | PromqlSpec | NatsSpec | AlertResolvedCheck | AlertExprCheck,
    Field(discriminator="type"),
]


class Verify(StrictModel):
    """Poll every check each ``interval`` until all hold, failing when ``within`` has passed."""

    interval: Duration = Field(default=10, gt=0, le=3600)
    within: Duration = Field(default=300, gt=0, le=86400)
    checks: list[Check] = Field(min_length=1)

    @model_validator(mode="after")
    def _interval_fits(self) -> Self:
        if self.interval > self.within:
            raise ValueError("interval is longer than within")
        return self


class RollingStep(StepSpecBase):
    """For each item, one at a time: run ``steps`` with the item bound to ``var``, then poll
    ``check``; stop at the first item that fails. ``items`` is a list of templates, or one
    template whose output is split on commas and whitespace. ``group`` (a template naming inventory
    groups or hosts) walks those hosts instead when an inventory is configured: each is bound to
    ``var`` and is the host the nested ``ssh`` steps and checks run on; without an inventory,
    ``items`` are walked (so one playbook serves both)."""

    type: Literal["rolling"]
    items: list[str] | str | None = None
    group: str | None = Field(default=None, min_length=1)
    var: str = Field(default="item", pattern=_IDENT_RE)
    steps: list[Step] = Field(min_length=1)
    check: Verify | None = None
    pause: Duration = Field(default=0, ge=0, le=3600)
    timeout: Duration = Field(default=3600, gt=0, le=86400)

    @field_validator("var")
    @classmethod
    def _not_shadowing(cls, var: str) -> str:
        if var in PLAYBOOK_VARIABLES:
            raise ValueError(f'"{var}" would hide the playbook variable of that name')
        return var

    @model_validator(mode="after")
    def _walks_something(self) -> Self:
        if self.items is None and self.group is None:
            raise ValueError("a rolling step needs items, a group, or both")
        return self


Step = Annotated[
    ExecSpec
    | SshSpec
    | HttpSpec
    | TcpSpec
    | PromqlSpec
    | NatsSpec
    | WaitStep
    | ApprovalStep
    | RollingStep
    | EscalateStep,
    Field(discriminator="type"),
]
RollingStep.model_rebuild()


class OnFailure(StrictModel):
    """Cleanup ``steps`` run when a step or verification fails; then escalate if ``escalate``."""

    escalate: bool = True
    steps: list[Step] = Field(default_factory=list)


# --- the playbook --------------------------------------------------------------------------


class Playbook(StrictModel):
    name: str = Field(pattern=_NAME_RE)
    description: str = ""
    runbook: str = Field(default="", description='e.g. "T-OPS-04 §1A"')
    params: dict[Annotated[str, Field(pattern=_IDENT_RE)], ParamSpec] = Field(default_factory=dict)
    timeout: Duration = Field(default=900, gt=0, le=86400, description="the whole run, verification included")
    env: EnvVars = Field(
        default_factory=dict,
        description="environment of every exec step (steps, verify checks, on_failure, rolling); a step's own env wins",
    )
    idempotent: bool = Field(default=False, description="steps are safe to repeat: resume after a crash")
    on_resolved: Literal["continue", "cancel"] = "continue"
    steps: list[Step] = Field(min_length=1)
    verify: Verify | None = None
    on_failure: OnFailure = Field(default_factory=OnFailure)


@dataclass(frozen=True)
class LoadedPlaybook:
    """A validated playbook, where it came from, its version (sha256 of the file's bytes), and what
    loading it found doubtful without being wrong (an exec step not passing what its script requires)."""

    playbook: Playbook
    file: str
    version: str
    warnings: tuple[ConfigError, ...] = ()

    @property
    def name(self) -> str:
        return self.playbook.name


def rolling_items(step: RollingStep, engine: TemplateEngine, context: Mapping[str, Any]) -> list[str]:
    """Render ``items``: each list element is one item; a single template's output is split on
    commas and whitespace (``"{{ labels.nodes }}"`` with ``"r1, r2"`` gives two). Empty items drop."""
    if step.items is None:
        return []
    if isinstance(step.items, list):
        rendered = [engine.render(item, context) for item in step.items]
        return [item for item in rendered if item]
    return [item for item in re.split(r"[,\s]+", engine.render(step.items, context)) if item]
