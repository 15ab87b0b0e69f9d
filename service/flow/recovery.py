"""Crash recovery: at start-up, the runs a crash (or a stop) left active.

First the process groups of steps that were running when the service died are ended
(service.flow.processes), so nothing of the old attempt runs beside what follows. Then a run
continues where it stopped: the main steps that had completed are not run again, and a run that was
verifying (or had done every step) only verifies — verification only reads, so any run may do that.
A run with a step in flight is resumed only when its playbook declares its steps idempotent (and has
not changed since) or it never started; otherwise it is marked `interrupted` and escalated, since a
step that may have half-run must be looked at by a person.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from service.clock import Clock
from service.flow.executor import Executor, ResumePoint, RunRequest, step_name
from service.flow.ports import Escalation
from service.flow.processes import end_leftovers
from service.inventory import UnknownHosts
from service.playbooks.playbook import LoadedPlaybook
from service.playbooks.templating import TemplateError
from service.rules.ruleset import Alert, NotificationContext, RuleSet, template_context
from service.store import ACTIVE_STATES, DispatchStore, ExecutionRecord, ExecutionState

log = logging.getLogger("remediator.dispatcher")

_INTERRUPTED = "the remediator stopped while this execution was active; steps after the last recorded one did not run"


async def recover(
    store: DispatchStore, rules: Callable[[], RuleSet], executor: Executor, clock: Clock, escalation: Escalation
) -> None:
    """Resume or interrupt every execution left in an active state (with the rules in force for each)."""
    for execution_id in await store.executions_in_state(ACTIVE_STATES):
        for line in await end_leftovers(store, execution_id):
            await store.add_event(execution_id, clock.now(), "recovery", line)
            log.warning(line, extra={"execution_id": execution_id})
        record = await store.get_execution(execution_id)
        assert record is not None
        request = resumable(record, rules())
        now = clock.now()
        if request is not None:
            where = _where(request)
            await store.add_event(execution_id, now, "resume", f"resumed after a restart: {where}")
            await store.set_state(execution_id, ExecutionState.QUEUED, now, "resumed after a restart")
            executor.start(request, queued=False)
            log.warning("execution resumed after a restart", extra={"execution_id": execution_id, "from": where})
            continue
        await store.set_state(execution_id, ExecutionState.INTERRUPTED, now, _INTERRUPTED)
        await escalation.escalate(execution_id, f"interrupted: {_INTERRUPTED}", "critical")
        log.warning("execution interrupted by a restart", extra={"execution_id": execution_id})


def resumable(record: ExecutionRecord, rules: RuleSet) -> RunRequest | None:
    """The run to continue, or None when it cannot be resumed."""
    execution, occurrence = record.execution, record.occurrence
    playbook = rules.playbooks.get(execution["playbook"])
    rule = rules.get(execution["rule"])
    if playbook is None or rule is None or occurrence is None:
        return None
    if playbook.version != execution["playbook_version"]:
        return None  # only with the playbook version the run was admitted with
    results = _completed(record.steps, playbook)
    names = [step_name("steps", index, step) for index, step in enumerate(playbook.playbook.steps)]
    verifying = execution["state"] == ExecutionState.VERIFYING or all(name in results for name in names)
    never_started = execution["started_at"] is None and not record.steps
    if not (never_started or verifying or playbook.playbook.idempotent):
        return None
    alert = Alert(
        occurrence["labels"],
        occurrence["annotations"],
        fingerprint=execution["fingerprint"],
        generator_url=occurrence["generator_url"],
    )
    try:  # the hosts as the inventory now says: a host removed from it since is not contacted
        hosts = rules.hosts_for(rule, template_context(alert, NotificationContext()))
    except (TemplateError, UnknownHosts):
        return None
    return RunRequest(
        execution_id=execution["id"],
        rule=execution["rule"],
        playbook=playbook,
        params=execution["params"],
        target=execution["target"],
        occurrence_id=occurrence["id"],
        fingerprint=execution["fingerprint"],
        labels=occurrence["labels"],
        annotations=occurrence["annotations"],
        generator_url=occurrence["generator_url"],
        severity=rule.rule.severity,
        steps=dict(results),
        resume=ResumePoint(frozenset(results), verifying) if record.steps or verifying else None,
        hosts=hosts,
        inventory=rules.inventory,
    )


def _completed(steps: Sequence[Mapping[str, Any]], playbook: LoadedPlaybook) -> dict[str, dict[str, Any]]:
    """The main steps that had completed, by name, with the results later templates read: a last
    attempt that held, or that failed for good on a step allowed to fail (the run went on)."""
    specs = {step_name("steps", index, step): step for index, step in enumerate(playbook.playbook.steps)}
    last: dict[str, Mapping[str, Any]] = {}
    for step in steps:
        if step["phase"] == "steps" and step["name"] in specs:
            last[step["name"]] = step
    done = {}
    for name, step in last.items():
        spec = specs[name]
        if step["ok"] or (spec.allow_failure and step["attempt"] > spec.retries and step["status"] != "cancelled"):
            done[name] = {
                "ok": bool(step["ok"]),
                "status": step["status"],
                "summary": step["summary"],
                "output": step["output"],
                "exit_code": step["exit_code"],
                "data": dict(step["data"] or {}),
            }
    return done


def _where(request: RunRequest) -> str:
    resume = request.resume
    if resume is None:
        return "from the first step"
    if resume.verifying:
        return "verification (every step had completed)"
    return f"after {len(resume.done)} completed step(s): {', '.join(sorted(resume.done)) or 'none'}"
