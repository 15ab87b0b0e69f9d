"""Where each step of a matched rule's playbook would run, and as whom: what ``remediator explain``
and ``POST /api/v1/simulate`` show beside each decision. Worked out from the rule's resolved hosts
and the inventory; nothing is contacted.

An ``ssh`` step runs on the rule's host (or its own ``host:``, or the host a ``rolling`` over a group
is at); with no inventory configured, a ``fallback: local`` one runs here. Every other step runs on
the remediator's own host.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from service.inventory import Host, Inventory, UnknownHosts
from service.playbooks.playbook import RollingStep
from service.rules.ruleset import RuleMatch, RuleSet
from service.steps import StepSpecBase
from service.steps.ssh import Spec as SshSpec


def step_placements(ruleset: RuleSet, match: RuleMatch) -> list[dict[str, Any]]:
    """One entry per step, check and cleanup step, nested ones included, in document order:
    ``{"phase", "step", "type", "runs": "here" | "remote" | "nowhere", "hosts": [...], "note"}``."""
    loaded = ruleset.playbooks.get(match.playbook)
    if loaded is None or match.error is not None:
        return []
    playbook = loaded.playbook
    out: list[dict[str, Any]] = []
    _walk(out, playbook.steps, "steps", match.hosts, ruleset.inventory)
    if playbook.verify is not None:
        _walk(out, playbook.verify.checks, "verify", match.hosts, ruleset.inventory)
    _walk(out, playbook.on_failure.steps, "on_failure", match.hosts, ruleset.inventory)
    return out


def _walk(
    out: list[dict[str, Any]],
    steps: Sequence[StepSpecBase],
    phase: str,
    hosts: tuple[Host, ...],
    inventory: Inventory | None,
    each: bool = False,  # inside a rolling step over a group: one of `hosts` at a time
) -> None:
    for index, step in enumerate(steps):
        kind = str(getattr(step, "type", "step"))
        name = step.name or f"{phase}-{index + 1}-{kind}"
        entry: dict[str, Any] = {"phase": phase, "step": name, "type": kind, "runs": "here", "hosts": [], "note": ""}
        if isinstance(step, SshSpec):
            entry.update(_ssh(step, hosts, inventory, each))
        out.append(entry)
        if isinstance(step, RollingStep):
            inner, note = _rolling_hosts(step, hosts, inventory)
            if note:
                entry["note"] = note
            if inner is not None:
                entry["hosts"] = [h.describe() for h in inner]
            inside = f"{phase}/{name}"
            walk_hosts, walk_each = (hosts, each) if inner is None else (inner, True)
            _walk(out, step.steps, inside, walk_hosts, inventory, walk_each)
            if step.check is not None:
                _walk(out, step.check.checks, f"{inside}/check", walk_hosts, inventory, walk_each)


def _rolling_hosts(
    step: RollingStep, hosts: tuple[Host, ...], inventory: Inventory | None
) -> tuple[tuple[Host, ...] | None, str]:
    """The hosts a rolling step walks (None: it walks plain items), and a note for the reader."""
    if step.group is None or inventory is None:
        return None, "" if step.group is None else "no inventory: walks its items here"
    if "{" in step.group:
        return None, f'walks the hosts of group "{step.group}" (a template, resolved when it runs), one at a time'
    try:
        return inventory.resolve(step.group), "one host at a time"
    except UnknownHosts as exc:
        return (), str(exc)


def _ssh(step: SshSpec, hosts: tuple[Host, ...], inventory: Inventory | None, each: bool) -> dict[str, Any]:
    if inventory is None:
        if step.fallback == "local":
            return {"runs": "here", "note": "no inventory: runs here (fallback: local)"}
        return {"runs": "nowhere", "note": "no inventory configured: the step would fail"}
    if step.host:
        if "{" in step.host:
            return {"runs": "remote", "note": f'on host "{step.host}" (a template, resolved when it runs)'}
        try:
            hosts = inventory.resolve([step.host])
        except UnknownHosts as exc:
            return {"runs": "nowhere", "note": str(exc)}
    if not hosts:
        return {"runs": "nowhere", "note": "the rule names no host (rule hosts:): the step would fail"}
    if len(hosts) > 1 and not (each and step.host is None):
        names = ", ".join(h.name for h in hosts)
        return {"runs": "nowhere", "note": f"{len(hosts)} hosts ({names}) and no host: the step would fail"}
    note = "one host at a time" if len(hosts) > 1 else ""
    return {"runs": "remote", "hosts": [h.describe() for h in hosts], "note": note}
