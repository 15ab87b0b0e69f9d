"""The rule set: loaded rules and playbooks, and which rules an alert matches (and why not).

Matching follows Alertmanager routes: rules are tried in file order (files sorted by name), every
matcher of a rule must hold, the first matching rule wins unless it says ``continue: true``. The rule
format is :mod:`service.rules.rule`; :mod:`service.rules.loading` builds a :class:`RuleSet` from files.

Speed: deciding for one alert must not scan 10,000 rules. Each enabled rule with an equality matcher
(``name="value"``, value not empty, or a regex that is a plain alternation like ``"A|B"``) is indexed
under that label and its values (``alertname`` preferred); a rule can only match alerts carrying one
of those exact label values. For an alert the candidates are the rules
indexed under one of its label pairs plus the few rules with no equality matcher, merged back into
file order, and only those are evaluated in full. Cost grows with the number of candidates, not the
number of rules.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Any, Literal, Protocol

from service.alerts.matchers import Matcher
from service.alerts.webhook import AlertStatus
from service.inventory import Host, Inventory, UnknownHosts
from service.playbooks.params import ParamError, ParamValue, validate_params
from service.playbooks.playbook import LoadedPlaybook
from service.playbooks.templating import TemplateEngine, TemplateError
from service.rules.rule import Rule

# Prometheus' FNV-1a 64 label-set fingerprint (prometheus/common model.LabelSet.Fingerprint).
_FNV_OFFSET = 14695981039346656037
_FNV_PRIME = 1099511628211
_FNV_MASK = 0xFFFFFFFFFFFFFFFF
_SEPARATOR = 0xFF


# --- alerts as matching sees them ---------------------------------------------------------------


class AlertLike(Protocol):
    """What matching needs from an alert; the webhook model can be adapted to :class:`Alert`."""

    @property
    def labels(self) -> Mapping[str, str]: ...
    @property
    def annotations(self) -> Mapping[str, str]: ...
    @property
    def status(self) -> AlertStatus: ...
    @property
    def fingerprint(self) -> str: ...
    @property
    def starts_at(self) -> datetime | None: ...
    @property
    def generator_url(self) -> str: ...


@dataclass(frozen=True)
class Alert:
    labels: Mapping[str, str]
    annotations: Mapping[str, str] = field(default_factory=dict)
    status: AlertStatus = "firing"
    fingerprint: str = ""
    starts_at: datetime | None = None
    generator_url: str = ""

    def __post_init__(self) -> None:
        if not self.fingerprint:
            object.__setattr__(self, "fingerprint", label_fingerprint(self.labels))


@dataclass(frozen=True)
class NotificationContext:
    """Notification-level fields of the webhook, shared by its alerts."""

    external_url: str = ""
    receiver: str = ""
    common_labels: Mapping[str, str] = field(default_factory=dict)
    common_annotations: Mapping[str, str] = field(default_factory=dict)
    group_labels: Mapping[str, str] = field(default_factory=dict)


def label_fingerprint(labels: Mapping[str, str]) -> str:
    """Alertmanager's alert fingerprint (FNV-1a 64 over sorted name, 0xff, value, 0xff), as hex."""
    h = _FNV_OFFSET
    for name in sorted(labels):
        for part in (name, labels[name]):
            for byte in part.encode("utf-8"):
                h = ((h ^ byte) * _FNV_PRIME) & _FNV_MASK
            h = ((h ^ _SEPARATOR) * _FNV_PRIME) & _FNV_MASK
    return f"{h:016x}"


def template_context(alert: AlertLike, context: NotificationContext) -> dict[str, Any]:
    """The variables of RULE_VARIABLES for one alert."""
    return {
        "labels": dict(alert.labels),
        "annotations": dict(alert.annotations),
        "status": alert.status,
        "fingerprint": alert.fingerprint,
        "startsAt": alert.starts_at.isoformat() if alert.starts_at else "",
        "generatorURL": alert.generator_url,
        "commonLabels": dict(context.common_labels),
        "commonAnnotations": dict(context.common_annotations),
        "groupLabels": dict(context.group_labels),
        "externalURL": context.external_url,
        "receiver": context.receiver,
    }


# --- loaded rules and results -------------------------------------------------------------------


@dataclass(frozen=True)
class LoadedRule:
    rule: Rule
    file: str
    line: int | None
    position: int  # order across all files: the order rules are tried in
    matchers: tuple[Matcher, ...]
    version: str  # sha256 of the rule's canonical JSON: changes whenever its meaning does
    statuses: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Precomputed: this test runs for every candidate of every alert.
        wanted = ("firing", "resolved") if self.rule.status == "any" else (self.rule.status,)
        object.__setattr__(self, "statuses", frozenset(wanted))

    @property
    def name(self) -> str:
        return self.rule.name

    def status_ok(self, status: str) -> bool:
        return status in self.statuses

    def accepts(self, status: str, labels: Mapping[str, str]) -> bool:
        """Status and every matcher hold (the hot path of matching, hence the plain loop)."""
        if status not in self.statuses:
            return False
        for matcher in self.matchers:
            if not matcher.matches(labels):
                return False
        return True

    def index_key(self) -> tuple[str, frozenset[str]] | None:
        """The label and values this rule is indexed under: from an equality (or literal
        alternation) matcher, ``alertname`` preferred, else the one with the fewest values."""
        keys = [(m.name, values) for m in self.matchers if (values := m.index_values) is not None]
        if not keys:
            return None
        return min(keys, key=lambda k: (k[0] != "alertname", len(k[1])))


@dataclass(frozen=True)
class RuleMatch:
    """A rule that matched an alert and what would run. With ``error`` set (a template failed to
    render, a param was refused, a host is not in the inventory) it is *not* a match: nothing may
    run, the dispatcher records and escalates it with ``refusal`` as its reason, and later rules are
    still tried. ``hosts``: the inventory hosts the rule resolved the alert to (none without an
    inventory or a ``hosts:``)."""

    rule: LoadedRule
    playbook: str
    params: Mapping[str, ParamValue]
    target: str
    rule_version: str
    playbook_version: str
    error: str | None = None
    hosts: tuple[Host, ...] = ()
    refusal: Literal["bad_params", "unknown_host"] = "bad_params"

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def mode(self) -> str:
        return self.rule.rule.mode

    def to_dict(self) -> dict[str, Any]:
        return {
            "rule": self.rule.name,
            "playbook": self.playbook,
            "params": dict(self.params),
            "target": self.target,
            "mode": self.mode,
            "rule_version": self.rule_version,
            "playbook_version": self.playbook_version,
            "error": self.error,
            "hosts": [host.describe() for host in self.hosts],
        }


# What explaining says of one rule for one alert.
MatchOutcome = Literal["matched", "not_matched", "error", "disabled", "not_reached"]


@dataclass(frozen=True)
class MatcherCheck:
    matcher: str
    ok: bool
    reason: str


@dataclass(frozen=True)
class RuleExplanation:
    """One rule's verdict for one alert, in evaluation order."""

    rule: str
    file: str
    line: int | None
    verdict: MatchOutcome
    reasons: tuple[str, ...]
    matchers: tuple[MatcherCheck, ...]
    would_run: RuleMatch | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "file": self.file,
            "line": self.line,
            "verdict": self.verdict,
            "reasons": list(self.reasons),
            "matchers": [{"matcher": m.matcher, "ok": m.ok, "reason": m.reason} for m in self.matchers],
            "would_run": self.would_run.to_dict() if self.would_run else None,
        }


# --- the rule set --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Index:
    by_label: Mapping[str, Mapping[str, tuple[int, ...]]]
    unindexed: tuple[int, ...]

    @classmethod
    def build(cls, rules: Sequence[LoadedRule]) -> _Index:
        by_label: dict[str, dict[str, list[int]]] = {}
        unindexed: list[int] = []
        for rule in rules:
            if not rule.rule.enabled:
                continue
            key = rule.index_key()
            if key is None:
                unindexed.append(rule.position)
                continue
            # One label per rule, so an alert (one value per label) reaches a rule at most once.
            name, values = key
            for value in values:
                by_label.setdefault(name, {}).setdefault(value, []).append(rule.position)
        frozen = {name: {value: tuple(p) for value, p in values.items()} for name, values in by_label.items()}
        return cls(frozen, tuple(unindexed))

    def candidates(self, labels: Mapping[str, str]) -> Iterable[int]:
        lists: list[tuple[int, ...]] = [self.unindexed] if self.unindexed else []
        for name, values in self.by_label.items():
            value = labels.get(name)
            if value is not None:
                found = values.get(value)
                if found:
                    lists.append(found)
        if len(lists) == 1:
            return lists[0]
        # Back to file order. No rule is in two lists; sorting a few dozen ints in C beats a merge.
        return sorted([p for found in lists for p in found])


@dataclass(frozen=True)
class RuleSet:
    """Immutable rules + playbooks, swapped whole on reload. Build with :meth:`build`."""

    rules: tuple[LoadedRule, ...]
    playbooks: Mapping[str, LoadedPlaybook]
    engine: TemplateEngine = field(compare=False, repr=False)
    _index: _Index = field(compare=False, repr=False)
    inventory: Inventory | None = field(default=None, compare=False)  # None: steps run here

    @classmethod
    def build(
        cls,
        rules: Sequence[LoadedRule],
        playbooks: Mapping[str, LoadedPlaybook],
        engine: TemplateEngine,
        inventory: Inventory | None = None,
    ) -> RuleSet:
        return cls(tuple(rules), MappingProxyType(dict(playbooks)), engine, _Index.build(rules), inventory)

    def get(self, name: str) -> LoadedRule | None:
        return next((r for r in self.rules if r.name == name), None)

    def match(self, alert: AlertLike, context: NotificationContext | None = None) -> list[RuleMatch]:
        """Rules matching ``alert`` in order, stopping after the first good match without
        ``continue``. Entries with ``error`` are failed renders, not matches (see RuleMatch)."""
        out: list[RuleMatch] = []
        variables: dict[str, Any] | None = None
        labels = alert.labels
        for position in self._index.candidates(labels):
            rule = self.rules[position]
            if not rule.accepts(alert.status, labels):
                continue
            if variables is None:
                variables = template_context(alert, context or NotificationContext())
            result = self._render(rule, variables)
            out.append(result)
            if result.ok and not rule.rule.continue_:
                break
        return out

    def matching_rules(self, alert: AlertLike) -> list[LoadedRule]:
        """The rules whose matchers and status accept ``alert`` (ignoring ``continue``, nothing
        rendered): what the benchmark and coverage checks measure."""
        rules, status, labels = self.rules, alert.status, alert.labels
        return [rules[p] for p in self._index.candidates(labels) if rules[p].accepts(status, labels)]

    def wants(self, status: str, labels: Mapping[str, str]) -> bool:
        """Whether any rule accepts an alert with this status and labels (nothing rendered)."""
        rules = self.rules
        return any(rules[p].accepts(status, labels) for p in self._index.candidates(labels))

    def candidate_count(self, labels: Mapping[str, str]) -> int:
        """How many rules the index leaves to evaluate for ``labels`` (what matching costs)."""
        return sum(1 for _ in self._index.candidates(labels))

    def explain(self, alert: AlertLike, context: NotificationContext | None = None) -> list[RuleExplanation]:
        """Every rule in order with its verdict and reasons; agrees with :meth:`match`."""
        variables = template_context(alert, context or NotificationContext())
        out: list[RuleExplanation] = []
        stopped_by: str | None = None
        for rule in self.rules:
            checks = tuple(
                MatcherCheck(str(m), m.matches(alert.labels), m.explain(alert.labels)) for m in rule.matchers
            )
            reasons = [c.reason for c in checks if not c.ok]
            if not rule.status_ok(alert.status):
                reasons.insert(0, f"alert status {alert.status} is not the rule's status {rule.rule.status}")
            verdict: MatchOutcome
            would_run: RuleMatch | None = None
            if not rule.rule.enabled:
                verdict, reasons = "disabled", ["rule is disabled (enabled: false)", *reasons]
            elif reasons:
                verdict = "not_matched"
            elif stopped_by is not None:
                verdict, reasons = (
                    "not_reached",
                    [f'would match, but rule "{stopped_by}" matched earlier without continue'],
                )
            else:
                would_run = self._render(rule, variables)
                if would_run.error is not None:
                    verdict, reasons = "error", [would_run.error]
                else:
                    verdict = "matched"
                    if not rule.rule.continue_:
                        stopped_by = rule.name
            out.append(RuleExplanation(rule.name, rule.file, rule.line, verdict, tuple(reasons), checks, would_run))
        return out

    def _render(self, rule: LoadedRule, variables: Mapping[str, Any]) -> RuleMatch:
        playbook = self.playbooks[rule.rule.playbook]
        params: dict[str, ParamValue] = {}
        target = ""
        error: str | None = None
        try:
            for name, value in rule.rule.params.items():
                params[name] = self.engine.render(value, variables) if isinstance(value, str) else value
            params = validate_params(playbook.playbook, params)
            target = self.engine.render(rule.rule.target, variables)
            if not target.strip():
                error = f'target "{rule.rule.target}" rendered empty'
        except (TemplateError, ParamError) as exc:
            error = str(exc)
        hosts: tuple[Host, ...] = ()
        refusal: Literal["bad_params", "unknown_host"] = "bad_params"
        if error is None:
            try:
                hosts = self.hosts_for(rule, variables)
            except TemplateError as exc:
                error = str(exc)
            except UnknownHosts as exc:
                error, refusal = f'{exc} (rule hosts: "{rule.rule.hosts}")', "unknown_host"
        return RuleMatch(
            rule, playbook.name, MappingProxyType(params), target, rule.version, playbook.version, error, hosts, refusal
        )

    def hosts_for(self, rule: LoadedRule, variables: Mapping[str, Any]) -> tuple[Host, ...]:
        """The inventory hosts ``rule`` names for an alert (``variables``: its template context); none
        without an inventory (steps run here) or when the rule names none. Raises TemplateError, or
        UnknownHosts for a name the inventory does not have (or that renders empty)."""
        if self.inventory is None or rule.rule.hosts is None:
            return ()
        rendered = self.engine.render(rule.rule.hosts, variables)
        if not rendered.strip():
            raise UnknownHosts([rendered], self.inventory)
        return self.inventory.resolve(rendered)
