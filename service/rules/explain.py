"""Offline checks behind ``remediator check`` and ``remediator explain`` / ``POST /api/v1/simulate``.

- :func:`check_config`: load rules and playbooks, returning every error (file:line: field: message).
- :func:`coverage`: with Prometheus alerting rule files, which alerts no rule covers and which rules
  no alert can reach.
- :func:`explain_payload`: for each alert of a webhook body (or a list of alerts), each rule's
  verdict and what would run; JSON-able, runs nothing. :func:`format_explanation` prints it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from service.alerts.webhook import WebhookNotification
from service.rules.ruleset import Alert, AlertStatus, LoadedRule, NotificationContext, RuleSet, load_ruleset
from service.yamlload import ConfigError, ConfigErrors, expand_globs, load_yaml_file, validation_errors

# An alerting rule labelled remediation="notify-only" (or "none") pages people and is meant to have
# no automatic remediation: coverage does not report it.
OPT_OUT_LABEL = "remediation"
OPT_OUT_VALUES = frozenset({"notify-only", "none"})


def check_config(
    rule_globs: Sequence[str], playbook_globs: Sequence[str], base_dir: Path
) -> tuple[RuleSet | None, list[ConfigError]]:
    """Load and cross-check rules and playbooks. ``(ruleset, [])`` when valid, else ``(None, errors)``."""
    try:
        return load_ruleset(rule_globs, playbook_globs, base_dir), []
    except ConfigErrors as exc:
        return None, list(exc.errors)


# --- coverage against Prometheus alerting rules -----------------------------------------------------


class _PromRule(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)
    alert: str | None = None
    record: str | None = None
    expr: str | int | float = ""
    labels: dict[str, str] = Field(default_factory=dict)


class _PromGroup(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)
    name: str
    rules: list[_PromRule] = Field(default_factory=list)


class _PromFile(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)
    groups: list[_PromGroup] = Field(default_factory=list)


@dataclass(frozen=True)
class AlertingRule:
    """An alert a Prometheus rule file can fire, with the labels known before it fires."""

    alert: str
    file: str
    line: int | None
    labels: Mapping[str, str]  # alertname + static labels; templated values are unknown

    @property
    def opted_out(self) -> bool:
        return self.labels.get(OPT_OUT_LABEL, "") in OPT_OUT_VALUES

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}" if self.line else self.file


@dataclass(frozen=True)
class CoverageReport:
    uncovered: tuple[AlertingRule, ...]  # alerts no rule can match (opt-outs excluded)
    unused: tuple[LoadedRule, ...]  # rules no alert in the files can reach
    unchecked: tuple[LoadedRule, ...]  # rules matching only on series labels: cannot be judged offline

    @property
    def ok(self) -> bool:
        return not self.uncovered and not self.unused

    def lines(self) -> list[str]:
        out = [f"{a.where}: alert {a.alert} is not covered by any rule" for a in self.uncovered]
        out += [f"{r.file}:{r.line}: rule {r.name} matches no alert in the alert rule files" for r in self.unused]
        out += [
            f"{r.file}:{r.line}: rule {r.name} matches only on labels set by the series; not checked"
            for r in self.unchecked
        ]
        return out


def load_alerting_rules(patterns: Sequence[str], base_dir: Path) -> tuple[list[AlertingRule], list[ConfigError]]:
    """Alerting rules from Prometheus rule files (``groups: [{rules: [{alert, expr, labels}]}]``)."""
    files, errors = expand_globs(patterns, base_dir)
    out: list[AlertingRule] = []
    for path, display in files:
        try:
            doc = load_yaml_file(path, display)
            parsed = _PromFile.model_validate(doc.data)
        except ConfigErrors as exc:
            errors += exc.errors
            continue
        except ValidationError as exc:
            errors += validation_errors(exc, doc)
            continue
        for g, group in enumerate(parsed.groups):
            for r, rule in enumerate(group.rules):
                if rule.alert is None:
                    continue  # a recording rule
                static = {k: v for k, v in rule.labels.items() if "{{" not in v}
                labels = {**static, "alertname": rule.alert}
                out.append(AlertingRule(rule.alert, display, doc.line_of(("groups", g, "rules", r)), labels))
    return out, errors


def coverage(ruleset: RuleSet, alerts: Sequence[AlertingRule]) -> CoverageReport:
    """Which alerts no rule covers and which rules cover no alert.

    Only labels known before an alert fires (``alertname`` and the rule's static labels) can be
    judged. A rule covers an alert when every matcher on a known label holds and at least one
    matcher is on a known label; matchers on other labels (set by the series, like ``instance``)
    are assumed to hold. Rules with no matcher on any known label are listed as unchecked.
    """
    enabled = [r for r in ruleset.rules if r.rule.enabled]
    covered: set[int] = set()
    used: set[str] = set()
    judged: set[str] = set()
    for index, alert in enumerate(alerts):
        for rule in enabled:
            known = [m for m in rule.matchers if m.name in alert.labels]
            if not known:
                continue
            judged.add(rule.name)
            if all(m.matches(alert.labels) for m in known):
                covered.add(index)
                used.add(rule.name)
    uncovered = tuple(a for i, a in enumerate(alerts) if i not in covered and not a.opted_out)
    unused = tuple(r for r in enabled if r.name in judged and r.name not in used)
    unchecked = tuple(r for r in enabled if r.name not in judged)
    return CoverageReport(uncovered, unused, unchecked)


# --- explain / simulate ---------------------------------------------------------------------------


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


def explain_alert(ruleset: RuleSet, alert: Alert, context: NotificationContext) -> dict[str, Any]:
    """One alert's part of :func:`explain_payload`'s result."""
    return {
        "labels": dict(alert.labels),
        "status": alert.status,
        "fingerprint": alert.fingerprint,
        "decisions": [m.to_dict() for m in ruleset.match(alert, context)],
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
            else:
                lines.append(f"  => {decision['rule']}: refused: {decision['error']}")
    return "\n".join(lines) + "\n"
