"""What a failed run's headline says beyond its reason: the last line the failing step wrote to stderr,
and what the run did before it failed (the steps that succeeded, in order, then the one that failed).

One reading of the report's steps (``report.report_steps``) for the pages, the Markdown report and the
escalation message alike. Step output is redacted when it is recorded, so what is quoted here is too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from service.store import ExecutionState

STDERR_LINE_CHARS = 300  # one line of a headline, not a log
STEPS_NAMED = 8  # past this, "and N more succeeded"
FAILED_STATES = frozenset({ExecutionState.FAILED, ExecutionState.ESCALATED})
_DONE = {"ok": "succeeded", "timeout": "timed out", "error": "could not run"}


@dataclass(frozen=True)
class Failure:
    """How a failed run ended, as far as its steps tell."""

    step: str | None  # the step that failed the run; None: every step succeeded (verification, a timeout)
    status: str  # that step's status (failed | timeout | error), "" with no step
    stderr_line: str  # the last non-empty line of that step's stderr, bounded; "" when it wrote none
    succeeded: tuple[str, ...]  # the steps that succeeded before, in order

    def why(self, reason: str) -> str:
        """The recorded reason, with the stderr line that explains it."""
        return f"{reason} (stderr: {self.stderr_line})" if self.stderr_line else reason

    @property
    def progress(self) -> str:
        """What the run did, in order: "router_stop succeeded, router_start failed"."""
        named = [f"{name} succeeded" for name in self.succeeded[:STEPS_NAMED]]
        if len(self.succeeded) > STEPS_NAMED:
            named.append(f"{len(self.succeeded) - STEPS_NAMED} more succeeded")
        if self.step is not None:
            named.append(f"{self.step} {_DONE.get(self.status, self.status)}")
        elif not named:
            named.append("no step ran")
        return ", ".join(named)


def failed_run(execution: Mapping[str, Any], steps: Sequence[Mapping[str, Any]]) -> Failure | None:
    """How a finished run failed, or None when it did not end failed (or escalated)."""
    return failure_of(steps) if execution["state"] in FAILED_STATES else None


def failure_of(steps: Sequence[Mapping[str, Any]]) -> Failure:
    """How a failing run failed. ``steps``: the report's steps, every attempt in order; the playbook's
    main steps count (verification and cleanup are told elsewhere), each by its last attempt."""
    last: dict[str, Mapping[str, Any]] = {}
    for step in steps:
        if step["phase"] == "steps":
            last.pop(str(step["name"]), None)  # a retried step counts where its last attempt ran
            last[str(step["name"])] = step
    ended = list(last.values())
    failed = ended[-1] if ended and not ended[-1]["ok"] else None
    before = ended[:-1] if failed is not None else ended
    return Failure(
        step=None if failed is None else str(failed["name"]),
        status="" if failed is None else str(failed["status"]),
        stderr_line="" if failed is None else last_line(failed.get("stderr") or ""),
        succeeded=tuple(str(step["name"]) for step in before if step["status"] == "ok"),
    )


def last_line(text: str) -> str:
    """The last non-empty line of ``text``, on one line and at most STDERR_LINE_CHARS long."""
    line = next((line.strip() for line in reversed(text.splitlines()) if line.strip()), "")
    return line if len(line) <= STDERR_LINE_CHARS else line[: STDERR_LINE_CHARS - 1] + "…"
