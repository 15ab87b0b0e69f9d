"""What a loaded rule set will act on, said before the service serves: each enabled rule, its
playbook, its mode, and the hosts, ports, directories and URLs its playbook will be given (from the
rule's params, else the playbook's defaults; a value from the alert is shown as its template).

A first run must not act on whatever happens to listen on a default port without saying so.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from service.playbooks.params import ParamValue
from service.rules.ruleset import RuleSet

# Params that say where a playbook acts (nats_port, router_host, state_dir, scripts_dir, nodes, ...).
_WHERE_RE = re.compile(r"(?:^|_)(?:host|hosts|port|ports|dir|url|urls|nodes|instance|path|file)$")

Mode = Literal["live", "dry-run"]


@dataclass(frozen=True)
class RuleReach:
    rule: str
    playbook: str
    mode: str  # enforce | shadow | dry-run
    target: str
    acts_on: dict[str, ParamValue]


def service_mode(dry_run: bool) -> Mode:
    return "dry-run" if dry_run else "live"


def rule_reach(ruleset: RuleSet, dry_run: bool) -> list[RuleReach]:
    """Each enabled rule and where its playbook acts, in the order rules are tried."""
    out: list[RuleReach] = []
    for loaded in ruleset.rules:
        rule = loaded.rule
        playbook = ruleset.playbooks.get(rule.playbook)
        if not rule.enabled or playbook is None:
            continue
        values: dict[str, ParamValue] = {
            name: spec.default for name, spec in playbook.playbook.params.items() if spec.default is not None
        }
        values.update(rule.params)
        where = {name: value for name, value in sorted(values.items()) if _WHERE_RE.search(name)}
        mode = "dry-run" if dry_run else rule.mode
        out.append(RuleReach(rule.name, rule.playbook, mode, rule.target, where))
    return out
