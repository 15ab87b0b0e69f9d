"""Step types that talk to the outside world, one module each.

The contract every step module follows (the executor and the verifier rely on it):

- ``Spec``: a pydantic model (``extra="forbid"``) subclassing :class:`StepSpecBase`, with a
  ``type: Literal["<name>"]`` discriminator. Templated fields are plain ``str``: the executor renders
  every string in a spec (sandboxed, strict Jinja2) *before* calling ``run``; a rendered value is
  never re-parsed as a shell line or split into several argv elements.
- ``async def run(spec: Spec, ctx: StepContext) -> StepOutcome``: does the work under the spec's hard
  timeout, never raises for an expected failure (it reports ``ok=False`` with a reason instead), and
  keeps at most ``ctx.output_limit`` bytes of output (the tail).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

DEFAULT_OUTPUT_LIMIT = 64 * 1024


class StepSpecBase(BaseModel):
    """Fields shared by every step (control flow is handled by the executor, not the step)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str | None = None
    timeout: float = Field(default=30.0, gt=0, le=86400, description="hard limit in seconds")
    retries: int = Field(default=0, ge=0, le=20)
    backoff: float = Field(default=1.0, ge=0, le=3600, description="first retry delay, doubled each retry")
    allow_failure: bool = False
    when: str | None = Field(default=None, description="template condition on earlier results")


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


def tail(text: bytes | str, limit: int) -> str:
    """Keep the last ``limit`` bytes, marking the cut, so the end of a long output survives."""
    raw = text.encode("utf-8", "replace") if isinstance(text, str) else text
    if len(raw) <= limit:
        return raw.decode("utf-8", "replace")
    dropped = len(raw) - limit
    return f"[... {dropped} bytes cut ...]\n" + raw[-limit:].decode("utf-8", "replace")
