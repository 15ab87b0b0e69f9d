"""Explain, behind ``remediator explain`` and ``POST /api/v1/simulate``: for each alert of a webhook
body (or a list of alerts), each rule's outcome and what would run; JSON-able, runs nothing.
:func:`format_explanation` prints it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from service.alerts.webhook import AlertStatus, WebhookNotification
from service.rules.placement import step_placements
from service.rules.ruleset import Alert, NotificationContext, RuleMatch, RuleSet


class _PayloadAlert(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)
    labels: dict[str, str]
    annotations: dict[str, str] = Field(default_factory=dict)
    status: AlertStatus = "firing"
    fingerprint: str = ""
    startsAt: datetime | None = None
    generatorURL: str = ""


class _Payload(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)
    alerts: list[_PayloadAlert] = Field(min_length=1)
    externalURL: str = ""
    receiver: str = ""
    commonLabels: dict[str, str] = Field(default_factory=dict)
    commonAnnotations: dict[str, str] = Field(default_factory=dict)
    groupLabels: dict[str, str] = Field(default_factory=dict)


def parse_alerts(payload: Any) -> tuple[list[Alert], NotificationContext]:
    """Alerts from a webhook body, a list of alerts, or one alert (``{"labels": ...}``).

    Raises ValueError naming the bad field (the HTTP endpoint answers 400 with it).
    """
    if isinstance(payload, list):
        payload = {"alerts": payload}
    elif isinstance(payload, dict) and "alerts" not in payload and "labels" in payload:
        payload = {"alerts": [payload]}
    try:
        body = _Payload.model_validate(payload)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        field = ".".join(str(p) for p in first["loc"]) or "body"
        raise ValueError(f"{field}: {first['msg']}") from None
    alerts = []
    for a in body.alerts:
        alerts.append(Alert(a.labels, a.annotations, a.status, a.fingerprint, a.startsAt, a.generatorURL))
    context = NotificationContext(
        body.externalURL, body.receiver, body.commonLabels, body.commonAnnotations, body.groupLabels
    )
    return alerts, context


def explain_payload(ruleset: RuleSet, payload: Any) -> dict[str, Any]:
    """What the rules decide for each alert, JSON-able; nothing runs.

    ``{"alerts": [{"labels", "status", "fingerprint", "decisions": [RuleMatch...],
    "rules": [{"rule", "file", "line", "verdict", "reasons", "matchers", "would_run"}...]}]}``.
    ``verdict`` is matched | not_matched | error | disabled | not_reached. Raises ValueError on a
    malformed payload.
    """
    alerts, context = parse_alerts(payload)
    return explain_alerts(ruleset, alerts, context)


def notification_alerts(notification: WebhookNotification) -> tuple[list[Alert], NotificationContext]:
    """A webhook body already validated as intake validates it, as :func:`explain_alert` takes it."""
    alerts = [
        Alert(a.labels, a.annotations, a.status, a.fingerprint, a.startsAt, a.generatorURL) for a in notification.alerts
    ]
    context = NotificationContext(
        notification.externalURL,
        notification.receiver,
        notification.commonLabels,
        notification.commonAnnotations,
        notification.groupLabels,
    )
    return alerts, context


def explain_alerts(ruleset: RuleSet, alerts: Sequence[Alert], context: NotificationContext) -> dict[str, Any]:
    return {"alerts": [explain_alert(ruleset, alert, context) for alert in alerts]}


def explain_alert(
    ruleset: RuleSet, alert: Alert, context: NotificationContext, matches: Sequence[RuleMatch] | None = None
) -> dict[str, Any]:
    """One alert's part of :func:`explain_payload`'s result; `matches`: ``ruleset.match``'s, when the
    caller has them already (to ask admission about them)."""
    return {
        "labels": dict(alert.labels),
        "status": alert.status,
        "fingerprint": alert.fingerprint,
        "decisions": [
            {**m.to_dict(), "steps": step_placements(ruleset, m)}
            for m in (ruleset.match(alert, context) if matches is None else matches)
        ],
        "rules": [e.to_dict() for e in ruleset.explain(alert, context)],
    }


def format_explanation(result: Mapping[str, Any]) -> str:
    """Readable text of :func:`explain_payload`'s result, for the CLI."""
    lines: list[str] = []
    for alert in result["alerts"]:
        labels = ", ".join(f'{k}="{v}"' for k, v in sorted(alert["labels"].items()))
        lines.append(f"alert {{{labels}}} {alert['status']} fingerprint {alert['fingerprint']}")
        for rule in alert["rules"]:
            lines.append(f"  {rule['verdict']:<11} {rule['rule']}  ({rule['file']}:{rule['line']})")
            lines += [f"      - {reason}" for reason in rule["reasons"]]
            run = rule["would_run"]
            if run and run["error"] is None:
                params = ", ".join(f"{k}={v!r}" for k, v in run["params"].items())
                lines.append(f"      would run {run['playbook']}({params}) on target {run['target']!r} [{run['mode']}]")
        if not alert["decisions"]:
            lines.append("  => nothing would run")
        for decision in alert["decisions"]:
            if decision["error"] is None:
                lines.append(
                    f"  => {decision['rule']}: {decision['playbook']} on {decision['target']!r} [{decision['mode']}]"
                )
                if decision["hosts"]:
                    lines.append(f"     hosts: {', '.join(_host(h) for h in decision['hosts'])}")
                if decision["hosts"] or any(p["runs"] != "here" for p in decision["steps"]):
                    lines += [f"     {_placement(p)}" for p in decision["steps"]]
            else:
                lines.append(f"  => {decision['rule']}: refused: {decision['error']}")
        if alert["decisions"]:
            lines += _admission_lines(alert.get("admission"), alert.get("admission_note", ""))
    return "\n".join(lines) + "\n"


def _admission_lines(verdicts: Sequence[Mapping[str, str]] | None, note: str) -> list[str]:
    """Whether each run would be admitted right now (``admission``: rule, decision, reason, detail)."""
    if verdicts is None:
        return [f"  admission not evaluated: {note}"] if note else []
    return [
        f"  admission now: {v['rule']}: {v['decision']} ({v['reason']})"
        + ("" if v["reason"] == "admitted" else f": {v['detail']}")
        for v in verdicts
    ]


def _host(host: Mapping[str, Any]) -> str:
    return f"{host['name']} ({host['user']}@{host['address']}:{host['port']})"


def _placement(placement: Mapping[str, Any]) -> str:
    where = {"here": "here", "nowhere": "nowhere", "remote": "on"}[placement["runs"]]
    hosts = ", ".join(_host(h) for h in placement["hosts"])
    note = f" ({placement['note']})" if placement["note"] else ""
    return (
        f"{placement['phase']}/{placement['step']} [{placement['type']}]: {where}{' ' + hosts if hosts else ''}{note}"
    )
