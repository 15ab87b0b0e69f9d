"""What an escalation says: its facts, fixed when it opens, and the notices the channels shape.

The facts are the same for every channel and every level (what fired, what ran, why it escalated,
where the report is); each channel turns a `Notice` into its own payload (channels.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from service.reports.headline import failure_of
from service.reports.report import report_steps
from service.store import ExecutionRecord
from service.times import timestamp

ALERTNAMES = {"failed": "RemediationFailed", "approval": "RemediationApprovalPending"}
_SUMMARY_CHARS = 1500


@dataclass(frozen=True)
class Links:
    """Where a person reads the report and decides an approval."""

    external_url: str

    def report(self, execution_id: str) -> str:
        return f"{self.external_url}/executions/{execution_id}"

    def decision(self, execution_id: str, decision: str) -> str:
        return f"{self.external_url}/api/v1/executions/{execution_id}/{decision}"


@dataclass(frozen=True)
class Notice:
    """One message of one escalation for one channel: a notification at `level`, or the closing
    message when `closing` is given (state, by, reason, closed_at)."""

    escalation_id: str
    channel: str
    facts: Mapping[str, Any]
    level: int | None
    closing: Mapping[str, str] | None = None

    @property
    def stage(self) -> str:
        return "close" if self.closing is not None else f"level-{self.level}"

    @property
    def dedup_key(self) -> str:
        """The same on a retry and across restarts: "once per level per channel" is a constraint."""
        return f"{self.escalation_id}/{self.stage}/{self.channel}"


def escalation_facts(
    record: ExecutionRecord,
    kind: str,
    reason: str,
    severity: str,
    now: datetime,
    approval: tuple[str, datetime] | None,
    links: Links,
    extra_labels: Mapping[str, str],
) -> dict[str, Any]:
    """What every message of this escalation says, fixed when it opens."""
    execution = record.execution
    alert_labels = (record.occurrence or {}).get("labels", {})
    execution_id = str(execution["id"])
    labels = {
        **extra_labels,
        "alertname": ALERTNAMES[kind],
        "execution_id": execution_id,
        "rule": execution["rule"],
        "playbook": execution["playbook"],
        "target": execution["target"],
        "severity": severity,
        "original_alertname": execution["alertname"],
        "instance": alert_labels.get("instance", ""),
    }
    facts: dict[str, Any] = {
        "kind": kind,
        "execution_id": execution_id,
        "reason": reason,
        "severity": severity,
        "opened_at": now.isoformat(),
        "labels": {k: str(v) for k, v in labels.items() if v},  # Alertmanager refuses empty values
        "report_url": links.report(execution_id),
    }
    if approval is not None:
        facts["approve_url"] = links.decision(execution_id, "approve")
        facts["deny_url"] = links.decision(execution_id, "deny")
        facts["deadline"] = approval[1].isoformat()
    facts["summary"] = _summary(record, reason, facts, approval)
    return facts


def _summary(
    record: ExecutionRecord, reason: str, facts: Mapping[str, Any], approval: tuple[str, datetime] | None
) -> str:
    """One paragraph: what fired, what ran (the steps that succeeded, then the one that failed), why it
    escalated (with the last line the failing step wrote to stderr), and where the report is. The
    pages and reports say the same (service.reports.headline)."""
    execution = record.execution
    instance = (record.occurrence or {}).get("labels", {}).get("instance")
    text = f"{execution['alertname']} fired" + (f" on {instance}" if instance else "")
    text += f" (rule {execution['rule']}, target {execution['target']})."
    failure = failure_of(report_steps(record.steps)) if record.steps else None
    if failure is not None:
        text += f" The remediator ran playbook {execution['playbook']}: {failure.progress}."
    else:
        text += f" No step of playbook {execution['playbook']} ran."
    if approval is not None:
        prompt, deadline = approval
        text += (
            f" It waits for a person to approve: {prompt}. Decide before {timestamp(deadline)} (POST"
            f" {facts['approve_url']} or {facts['deny_url']} with the operator token), or it is denied."
        )
    else:
        why = reason.rstrip(".")
        text += f" It escalated because {failure.why(why) if failure is not None else why}."
    text += f" Report: {facts['report_url']}"
    return text if len(text) <= _SUMMARY_CHARS else text[: _SUMMARY_CHARS - 1] + "…"
