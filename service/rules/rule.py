"""The rules file format: what a rule says, validated as written (format in ``docs/rules.md``).

Types only, like ansible-rulebook's ``rule_types.py``: matching is :mod:`service.rules.ruleset`,
reading and cross-checking the files is :mod:`service.rules.loading`.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, Field

from service.alerts.matchers import MatcherError, parse_matchers
from service.models import StrictModel
from service.playbooks.params import ParamValue
from service.times import Duration

# What rule templates (params, target) may read; built by RuleSet for each matched alert.
RULE_VARIABLES = frozenset(
    {
        "labels",
        "annotations",
        "status",
        "fingerprint",
        "startsAt",
        "generatorURL",
        "commonLabels",
        "commonAnnotations",
        "groupLabels",
        "externalURL",
        "receiver",
    }
)
# Rate limits and concurrency apply per target. The instance is what a remediation acts on; an
# alert without one falls back to its own fingerprint so it still gets a stable, narrow key.
DEFAULT_TARGET = "{{ labels.instance | default(fingerprint) }}"
_NAME_RE = r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$"


# `alertname=="X"`: Alertmanager reads a value "=X" (or refuses the quote); in a rule it is a C habit.
_DOUBLE_EQUALS_RE = re.compile(r'(?:^|[{,])\s*([a-zA-Z_:][a-zA-Z0-9_:]*)\s*==\s*"?([^",}]*)')


def _valid_matcher(text: str) -> str:
    try:
        parsed = parse_matchers(text)
        error = None
    except MatcherError as exc:
        parsed, error = [], str(exc)
    if error is not None or any(m.op == "=" and m.value.startswith("=") for m in parsed):
        double = _DOUBLE_EQUALS_RE.search(text)
        if double is not None:
            name, value = double.groups()
            raise ValueError(f'`==` is not an operator: write {name}="{value}" (operators: =, !=, =~, !~)')
    if error is not None:
        raise ValueError(error)
    return text


class Limits(StrictModel):
    """Consumed by admission; see docs/rules.md for the meaning of each."""

    cooldown: Duration = Field(default=300, ge=0, description="after a run for a target, wait this long")
    max_runs: int = Field(default=3, ge=1, le=10000, description="runs per target per window")
    window: Duration = Field(default=3600, gt=0, le=30 * 86400)
    concurrency: Literal["single", "queued", "restart", "parallel"] = "single"
    max_queue: int = Field(default=10, ge=1, le=10000, description="queued mode: waiting runs per target")
    max_parallel: int = Field(default=4, ge=1, le=1000, description="parallel mode: runs at once per target")
    rerun_after: Duration | None = Field(
        default=None, gt=0, description="run again for an alert that is still firing after this long"
    )


class Rule(StrictModel):
    name: str = Field(pattern=_NAME_RE)
    description: str = ""
    owner: str = ""
    match: list[Annotated[str, AfterValidator(_valid_matcher)]] = Field(min_length=1)
    status: Literal["firing", "resolved", "any"] = "firing"
    playbook: str
    params: dict[str, ParamValue] = Field(default_factory=dict)
    target: str = Field(default=DEFAULT_TARGET, min_length=1)
    hosts: str | None = Field(
        default=None,
        min_length=1,
        description="the inventory host(s) or group(s) the alert is about, a template split on commas and "
        "whitespace; resolved against the inventory (a name not in it refuses the run); ignored without one",
    )
    limits: Limits = Field(default_factory=Limits)
    mode: Literal["enforce", "shadow"] = "enforce"
    continue_: bool = Field(default=False, alias="continue")
    enabled: bool = True
    escalate_on_refusal: bool = True
    severity: Literal["info", "warning", "critical", "page"] = "critical"


class RulesFile(StrictModel):
    rules: list[Rule]
