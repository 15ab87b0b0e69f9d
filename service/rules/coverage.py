"""Coverage behind ``remediator check --alert-rules``: with Prometheus alerting rule files, which alerts
no rule covers and which rules no alert can reach.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from service.rules.ruleset import LoadedRule, RuleSet
from service.yamlload import ConfigError, ConfigErrors, expand_globs, load_yaml_file, validation_errors

# An alerting rule labelled remediation="notify-only" (or "none") pages people and is meant to have
# no automatic remediation: coverage does not report it.
OPT_OUT_LABEL = "remediation"
OPT_OUT_VALUES = frozenset({"notify-only", "none"})


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
