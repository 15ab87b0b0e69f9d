"""The HTTP API's requests and answers as pydantic models.

Handlers serialise their answers through these models and ``service.web.openapi`` builds the OpenAPI
document from them, so the document says what the service does. Records that come from the store
allow extra fields: a column added later reaches the answer without breaking its schema.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from service.rules.ruleset import MatchOutcome
from service.times import Duration

ParamValue = str | int | float | bool  # service.playbooks.params.ParamValue, spelt out for the schema


class _Answer(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Record(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)


# --- requests --------------------------------------------------------------------------------------


class PauseRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rule: str = Field(default="*", min_length=1, max_length=200, description="a rule name, or * for every rule")
    target: str = Field(default="*", min_length=1, max_length=500, description="a target, or * for every target")
    reason: str = Field(min_length=1, max_length=1000)
    duration: Duration | None = Field(
        default=None, gt=0, le=30 * 86400, description="e.g. 30m, 2h or seconds; none: until resumed"
    )
    duration_seconds: Duration | None = Field(default=None, gt=0, le=30 * 86400, description="the same, in seconds")

    @model_validator(mode="after")
    def _one_duration(self) -> Self:
        if self.duration is not None:
            if self.duration_seconds is not None and self.duration_seconds != self.duration:
                raise ValueError("give duration or duration_seconds, not both")
            self.duration_seconds = self.duration
        return self


class ResetRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rule: str = Field(min_length=1, max_length=200)
    target: str = Field(min_length=1, max_length=500)


class OperatorForm(BaseModel):
    """An HTML page's action form: the operator token travels in the body, never in a URL."""

    token: str = ""
    by: str = ""


class PauseForm(OperatorForm):
    rule: str = ""
    target: str = ""
    reason: str = ""
    minutes: str = Field(default="", description="empty: until resumed")


class ResetForm(OperatorForm):
    rule: str = ""
    target: str = ""


# --- errors ----------------------------------------------------------------------------------------


class ErrorDetail(_Answer):
    field: str
    message: str


class ErrorAnswer(_Answer):
    status: Literal["error"] = "error"
    error: str
    details: list[ErrorDetail] | None = Field(default=None, description="each problem of a webhook body")


class ReloadFailed(_Answer):
    status: Literal["error"] = "error"
    errors: list[str]


# --- answers ---------------------------------------------------------------------------------------


class WebhookAccepted(_Answer):
    status: Literal["accepted"]
    notification_id: int | None = Field(
        description="the stored notification; null when every alert was a re-send acknowledged from memory"
    )
    alerts: int


class ReloadDone(_Answer):
    status: Literal["success"] = "success"


class Execution(_Record):
    id: str
    created_at: str
    updated_at: str
    rule: str
    rule_version: str
    playbook: str
    playbook_version: str
    target: str
    occurrence_id: int | None
    fingerprint: str
    alertname: str
    mode: str
    params: dict[str, Any]
    state: str
    reason: str
    refusal: str | None = None
    started_at: str | None
    finished_at: str | None


class ExecutionList(_Answer):
    executions: list[Execution]
    limit: int
    offset: int


class Occurrence(_Record):
    fingerprint: str
    starts_at: str
    alertname: str
    labels: dict[str, str]
    annotations: dict[str, str]
    generator_url: str
    status: str
    ends_at: str | None


class Step(_Record):
    phase: str
    name: str
    type: str
    attempt: int
    started_at: str
    duration_s: float
    ok: bool
    status: str
    summary: str
    output: str = Field(description="the tail of what the step printed: stdout and stderr interleaved")
    stdout: str | None = Field(description="an exec step's stdout tail; null for other steps and older runs")
    stderr: str | None = Field(description="an exec step's stderr tail; null for other steps and older runs")
    exit_code: int | None
    data: dict[str, Any]


class TimelineEvent(_Record):
    at: str
    kind: str
    message: str
    data: dict[str, Any]


class Escalation(_Record):
    id: str
    kind: str
    state: str
    messages: list[dict[str, Any]]


class Approval(_Record):
    id: int
    step: str
    prompt: str
    requested_at: datetime
    deadline: datetime
    decided_at: datetime | None
    decision: str | None
    approver: str | None


class ExecutionReport(_Answer):
    execution: Execution
    alert: Occurrence | None = Field(description="the alert occurrence; null once pruned")
    steps: list[Step]
    timeline: list[TimelineEvent]
    escalations: list[Escalation]
    approvals: list[Approval]


class Decided(_Answer):
    status: Literal["approved", "denied"]
    by: str


class Acknowledged(_Answer):
    status: Literal["acknowledged"] = "acknowledged"
    by: str
    escalations: int = Field(description="how many open escalations were closed")


class Pause(_Record):
    id: int
    rule: str
    target: str
    reason: str
    created_by: str
    created_at: str
    until: str | None


class SilencePause(_Answer):
    id: str
    created_by: str
    comment: str
    ends_at: str
    matchers: list[str]


class PauseList(_Answer):
    pauses: list[Pause]
    silences: list[SilencePause] = Field(description="Alertmanager silences pausing automation")


class Paused(_Answer):
    status: Literal["paused"] = "paused"
    id: int


class Resumed(_Answer):
    status: Literal["resumed"] = "resumed"
    id: int


class LimitsReset(_Answer):
    status: Literal["reset"] = "reset"
    rule: str
    target: str
    by: str


# --- simulate --------------------------------------------------------------------------------------


class HostTarget(_Answer):
    name: str = Field(description="the host's name in the inventory")
    address: str
    port: int
    user: str = Field(description="the user the ssh step logs in as")


class StepPlacement(_Answer):
    phase: str
    step: str
    type: str
    runs: Literal["here", "remote", "nowhere"] = Field(
        description="here: on the remediator's host; remote: over ssh on `hosts`; nowhere: the step would fail"
    )
    hosts: list[HostTarget]
    note: str


class WouldRun(_Answer):
    rule: str
    playbook: str
    params: dict[str, ParamValue]
    target: str
    mode: str
    rule_version: str
    playbook_version: str
    error: str | None = Field(
        description="set: refused (a template or param failed, or a host is not in the inventory), nothing would run"
    )
    hosts: list[HostTarget] = Field(description="the inventory hosts the rule resolved the alert to")
    steps: list[StepPlacement] = Field(
        default_factory=list, description="in decisions: where each step would run, and as whom"
    )


class MatcherCheck(_Answer):
    matcher: str
    ok: bool
    reason: str


class RuleVerdict(_Answer):
    rule: str
    file: str
    line: int | None
    verdict: MatchOutcome
    reasons: list[str]
    matchers: list[MatcherCheck]
    would_run: WouldRun | None


class AdmissionNow(_Answer):
    rule: str
    decision: Literal["run", "queue", "refuse", "shadow"]
    reason: str = Field(description="admitted, paused, shadow, storm, cooldown, budget_spent, busy, ...")
    detail: str


class SimulatedAlert(_Answer):
    labels: dict[str, str]
    status: Literal["firing", "resolved"]
    fingerprint: str
    decisions: list[WouldRun]
    rules: list[RuleVerdict]
    admission: list[AdmissionNow] = Field(
        description="for each decision that would run, what admission would decide right now for a new"
        " occurrence (pauses and silences, shadow mode, storm guard, cooldown, budget, concurrency); reads only"
    )


class SimulateResult(_Answer):
    alerts: list[SimulatedAlert]
