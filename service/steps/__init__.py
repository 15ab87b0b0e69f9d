"""Step types, one module each: those that talk to the outside world, and the control steps
(``service.steps.control``: wait, escalate, approval, rolling and the alert checks), which act on
the run itself through the :class:`StepControl` the executor puts in their context. Every type is
found by name in ``service.steps.registry``.

The contract every I/O step module follows (the executor and the verifier rely on it):

- ``Spec``: a pydantic model (``extra="forbid"``) subclassing :class:`StepSpecBase`, with a
  ``type: Literal["<name>"]`` discriminator. Templated fields are plain ``str``: the executor renders
  every string in a spec (sandboxed, strict Jinja2) *before* calling ``run``; a rendered value is
  never re-parsed as a shell line or split into several argv elements.
- ``async def run(spec: Spec, ctx: StepContext) -> StepOutcome``: does the work under the spec's hard
  timeout, never raises for an expected failure (it reports ``ok=False`` with a reason instead), and
  keeps at most ``ctx.output_limit`` bytes of output (the tail).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import BaseModel, ConfigDict, Field

from service.inventory import Host, Inventory
from service.times import Duration

if TYPE_CHECKING:  # the pool module imports this package's helpers
    from service.steps.ssh_connections import SshConnections

DEFAULT_OUTPUT_LIMIT = 64 * 1024


class StepSpecBase(BaseModel):
    """Fields shared by every step (`when`, retries and `allow_failure` are the executor's to apply)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str | None = None
    timeout: Duration = Field(default=30.0, gt=0, le=86400, description="hard limit: seconds or 30s, 5m, 1h30m")
    retries: int = Field(default=0, ge=0, le=20)
    backoff: Duration = Field(default=1.0, ge=0, le=3600, description="first retry delay, doubled each retry")
    allow_failure: bool = False
    when: str | None = Field(default=None, description="template condition on earlier results")


class ProcessRecorder(Protocol):
    """Where a step records the process group it started, before waiting on it, and its end."""

    async def started(self, pgid: int) -> None: ...
    async def ended(self, pgid: int) -> None: ...


@dataclass(frozen=True)
class StepContext:
    """What a running step may know about its execution and the world around it."""

    execution_id: str
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    prometheus_url: str = "http://127.0.0.1:9090"
    alertmanager_url: str = "http://127.0.0.1:9093"
    nats_url: str = "nats://127.0.0.1:4222"
    nats_monitor_url: str = "http://127.0.0.1:8222"
    output_limit: int = DEFAULT_OUTPUT_LIMIT
    generator_url: str = ""  # the alert's, where the alert_expr check finds its expression
    control: StepControl | None = None  # the run executing the step: control steps need it
    processes: ProcessRecorder | None = None  # where a step that starts a process group records it
    inventory: Inventory | None = None  # the run's (None: no inventory configured, steps run here)
    hosts: tuple[Host, ...] = ()  # the hosts the step acts on: the rule's, or a rolling step's current one
    ssh: SshConnections | None = None  # the connection pool the ssh step uses


@dataclass(frozen=True)
class StepOutcome:
    """The result of one attempt of one step, as stored in the execution record."""

    ok: bool
    status: str  # "ok" | "failed" | "timeout" | "error"
    summary: str  # one readable line: what was done and what came of it
    output: str = ""  # bounded tail of what the step printed or received
    exit_code: int | None = None
    data: Mapping[str, Any] = field(default_factory=dict)  # structured values for later templates/evidence
    duration_s: float = 0.0

    @classmethod
    def error(cls, summary: str) -> StepOutcome:
        """The step could not be run at all (a template, a bug, an unknown type): why."""
        return cls(ok=False, status="error", summary=summary)


class StepControl(Protocol):
    """What a control step may ask of the run executing it, and no more: the executor hands each
    step its own, bound to the step's phase, name and template context. Parameters typed ``Any``
    are the playbook format's own models (a nested step list, a ``verify`` block, a rolling step),
    which this package does not import."""

    @property
    def phase(self) -> str: ...
    @property
    def name(self) -> str: ...

    def rolling_items(self, rolling: Any) -> tuple[list[str], bool]:
        """A rolling step's items, rendered in the step's template context, and whether they are
        inventory hosts (its ``group``) rather than plain items. Raises StepError when there are none to
        be had (a group without an inventory and no items)."""
        ...

    async def run_steps(
        self, phase: str, steps: Sequence[Any], variables: Mapping[str, Any], host: str | None = None
    ) -> str | None:
        """Run nested steps in order with `variables` added to the context (and `host`, an inventory
        host, as the one they act on): None, or why one failed."""
        ...

    async def verify(
        self, phase: str, verify: Any, variables: Mapping[str, Any], host: str | None = None
    ) -> str | None:
        """Poll a verify block until it holds (None) or its time is up (why not); `host` as for run_steps."""
        ...

    async def escalate(self, reason: str, severity: str) -> str:
        """Escalate the run; returns the reason as published (redacted)."""
        ...

    async def approval(self, prompt: str, timeout_s: float) -> StepOutcome:
        """Wait for a person's decision, or `timeout_s` (a denial)."""
        ...

    async def alert_status(self) -> str:
        """The triggering alert's status now: firing or resolved."""
        ...


def tail(text: bytes | str, limit: int) -> str:
    """Keep the last ``limit`` bytes, marking the cut, so the end of a long output survives."""
    raw = text.encode("utf-8", "replace") if isinstance(text, str) else text
    if len(raw) <= limit:
        return raw.decode("utf-8", "replace")
    dropped = len(raw) - limit
    return f"[... {dropped} bytes cut ...]\n" + raw[-limit:].decode("utf-8", "replace")
