"""What a playbook template may read, declared once: the loader checks every template against
:data:`PLAYBOOK_VARIABLES` and the executor builds each step's context with :func:`run_context`, so a
variable the documentation promises and ``check`` accepts is one the run provides.

    params      validated param values            labels / annotations  of the triggering alert
    steps       results of earlier steps by name: {ok, status, summary, output, exit_code, data}
    execution   {id, rule, playbook, target, fingerprint, started_at, hosts, host}
    now         the current time (UTC), when the step's context is built

Times are :class:`TemplateTime`: ``{{ now }}`` prints RFC 3339, ``now.hour`` and ``now.weekday()``
work as on any datetime, and ``time_in(...)`` (service.playbooks.templating) reads ``now``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from typing import Any


class TemplateTime(datetime):
    """A UTC datetime that renders as RFC 3339 (``2026-12-01T23:54:43.123456+00:00``) in a template."""

    def __str__(self) -> str:
        return self.isoformat()

    @classmethod
    def of(cls, value: datetime) -> TemplateTime:
        utc = value.astimezone(UTC)
        return cls(utc.year, utc.month, utc.day, utc.hour, utc.minute, utc.second, utc.microsecond, UTC)


@dataclass(frozen=True)
class ExecutionFacts:
    """``execution.*`` in a template."""

    id: str
    rule: str
    playbook: str
    target: str
    fingerprint: str
    started_at: datetime
    hosts: tuple[str, ...] = ()  # the inventory hosts the rule resolved the alert to
    host: str = ""  # the one host when there is exactly one, else ""


EXECUTION_FIELDS = frozenset(field.name for field in fields(ExecutionFacts))

# Each variable, with the attributes a template may read of it when they are fixed (None: checked
# elsewhere, e.g. params against the playbook's own, steps against earlier step names, or free).
PLAYBOOK_VARIABLES: Mapping[str, frozenset[str] | None] = {
    "params": None,
    "labels": None,
    "annotations": None,
    "steps": None,
    "execution": EXECUTION_FIELDS,
    "now": None,
}


def run_context(
    *,
    params: Mapping[str, Any],
    labels: Mapping[str, str],
    annotations: Mapping[str, str],
    steps: Mapping[str, Any],
    execution: ExecutionFacts,
    now: datetime,
) -> dict[str, Any]:
    """The template context of one step: exactly the names of :data:`PLAYBOOK_VARIABLES`."""
    facts = asdict(execution) | {"started_at": TemplateTime.of(execution.started_at), "hosts": list(execution.hosts)}
    return {
        "params": dict(params),
        "labels": dict(labels),
        "annotations": dict(annotations),
        "steps": steps,
        "execution": facts,
        "now": TemplateTime.of(now),
    }
