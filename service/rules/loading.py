"""Reading rule files: parsed, validated, cross-checked against the playbooks, built into a RuleSet.

Every problem of every file is collected (file, line, field, message) rather than stopping at the
first, so one ``remediator check`` lists them all and a reload refuses with all of them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from pydantic import ValidationError

from service.alerts.matchers import parse_matcher_list
from service.inventory import Inventory, load_inventory
from service.playbooks.loading import load_playbooks
from service.playbooks.params import check_param
from service.playbooks.playbook import LoadedPlaybook
from service.playbooks.templating import TemplateEngine, TemplateError
from service.rules.rule import RULE_VARIABLES, Rule, RulesFile
from service.rules.ruleset import LoadedRule, RuleSet
from service.yamlload import ConfigError, ConfigErrors, YamlDocument, expand_globs, load_yaml, validation_errors


def load_rules(
    files: Iterable[tuple[Path, str]],
    playbooks: Mapping[str, LoadedPlaybook] | None,
    engine: TemplateEngine,
    inventory: Inventory | None = None,
) -> RuleSet:
    """Load rule files (``(path, display_name)``, tried in the order given) and cross-check them.

    With ``playbooks=None`` (the playbooks failed to load) only the rules themselves are checked,
    so one ``check`` run still lists every error. Raises ConfigErrors with all problems.
    """
    errors: list[ConfigError] = []
    loaded: list[LoadedRule] = []
    first_seen: dict[str, str] = {}
    for path, display in files:
        try:
            source = path.read_bytes()
        except OSError as exc:
            errors.append(ConfigError(display, None, "", f"cannot read: {exc.strerror}"))
            continue
        try:
            rules, doc = _parse_file(source, display)
        except ConfigErrors as exc:
            errors.extend(exc.errors)
            continue
        for index, rule in enumerate(rules):
            where = ("rules", index)
            if rule.name in first_seen:
                errors.append(
                    doc.error((*where, "name"), f'duplicate rule name "{rule.name}" (first at {first_seen[rule.name]})')
                )
                continue
            first_seen[rule.name] = f"{display}:{doc.line_of(where)}"
            problems = _cross_check(doc, index, rule, playbooks, engine)
            errors += problems
            if not problems:
                version = hashlib.sha256(
                    json.dumps(rule.model_dump(mode="json", by_alias=True), sort_keys=True).encode()
                ).hexdigest()
                matchers = tuple(parse_matcher_list(rule.match))
                loaded.append(LoadedRule(rule, display, doc.line_of(where), len(loaded), matchers, version))
    if errors or playbooks is None:
        raise ConfigErrors(errors)
    return RuleSet.build(loaded, playbooks, engine, inventory)


def load_ruleset(
    rule_globs: Sequence[str], playbook_globs: Sequence[str], base_dir: Path, inventory: Path | None = None
) -> RuleSet:
    """Playbooks and rules from globs relative to ``base_dir``, and the inventory when one is given
    (loaded with them, so a reload swaps all three at once); raises ConfigErrors listing every problem
    in every file (what ``remediator check`` prints and reload refuses on)."""
    engine = TemplateEngine()
    errors: list[ConfigError] = []
    hosts: Inventory | None = None
    if inventory is not None:
        try:
            hosts = load_inventory(inventory, _display(inventory, base_dir))
        except ConfigErrors as exc:
            errors += exc.errors
    playbook_files, playbook_glob_errors = expand_globs(playbook_globs, base_dir)
    errors += playbook_glob_errors
    rule_files, rule_glob_errors = expand_globs(rule_globs, base_dir)
    errors += rule_glob_errors
    playbooks: dict[str, LoadedPlaybook] | None
    try:
        playbooks = load_playbooks(playbook_files, engine)
    except ConfigErrors as exc:
        errors += exc.errors
        playbooks = None
    try:
        ruleset = load_rules(rule_files, playbooks, engine, hosts)
    except ConfigErrors as exc:
        raise ConfigErrors([*errors, *exc.errors]) from None
    if errors:
        raise ConfigErrors(errors)
    return ruleset


def check_config(
    rule_globs: Sequence[str], playbook_globs: Sequence[str], base_dir: Path, inventory: Path | None = None
) -> tuple[RuleSet | None, list[ConfigError]]:
    """Load and cross-check rules, playbooks and the inventory. ``(ruleset, [])`` when valid, else
    ``(None, errors)``."""
    try:
        return load_ruleset(rule_globs, playbook_globs, base_dir, inventory), []
    except ConfigErrors as exc:
        return None, list(exc.errors)


def _display(path: Path, base_dir: Path) -> str:
    try:
        return str(path.relative_to(base_dir))
    except ValueError:
        return str(path)


def _parse_file(source: bytes, file: str) -> tuple[list[Rule], YamlDocument]:
    doc = load_yaml(source, file)
    if doc.data is None:
        return [], doc  # an empty file is a file with no rules yet
    try:
        return RulesFile.model_validate(doc.data).rules, doc
    except ValidationError as exc:
        raise ConfigErrors(validation_errors(exc, doc, model=RulesFile)) from None


def _cross_check(
    doc: YamlDocument,
    index: int,
    rule: Rule,
    playbooks: Mapping[str, LoadedPlaybook] | None,
    engine: TemplateEngine,
) -> list[ConfigError]:
    where = ("rules", index)
    errors: list[ConfigError] = []
    templated = [(("params", name), value) for name, value in rule.params.items() if isinstance(value, str)]
    hosts = [(("hosts",), rule.hosts)] if rule.hosts is not None else []
    for sub, source in [*templated, (("target",), rule.target), *hosts]:
        try:
            unknown = sorted(engine.undeclared_variables(source) - RULE_VARIABLES)
        except TemplateError as exc:
            errors.append(doc.error((*where, *sub), str(exc)))
            continue
        if unknown:
            known = ", ".join(sorted(RULE_VARIABLES))
            errors.append(doc.error((*where, *sub), f"unknown template variable {', '.join(unknown)} (known: {known})"))
    if playbooks is None:
        return errors
    loaded = playbooks.get(rule.playbook)
    if loaded is None:
        known = ", ".join(sorted(playbooks)) or "none"
        errors.append(doc.error((*where, "playbook"), f'unknown playbook "{rule.playbook}" (known: {known})'))
        return errors
    declared = loaded.playbook.params
    for name, value in rule.params.items():
        spec = declared.get(name)
        if spec is None:
            errors.append(
                doc.error((*where, "params", name), f'param "{name}" is not declared by playbook "{rule.playbook}"')
            )
        elif not (isinstance(value, str) and "{" in value):
            # A literal value can be checked now rather than refused at 3 a.m.
            checked = check_param(spec, value)
            if isinstance(checked, str):
                errors.append(doc.error((*where, "params", name), checked))
    for name, spec in declared.items():
        if spec.is_required and name not in rule.params:
            at = (*where, "params") if rule.params else where
            errors.append(doc.error(at, f'playbook "{rule.playbook}" requires param "{name}"'))
    return errors
