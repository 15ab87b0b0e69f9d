"""Crash recovery: at start-up, the runs a crash (or a stop) left active.

Those whose playbook declares its steps idempotent (and has not changed since), or that never
started, are resumed; the others are marked `interrupted` and escalated, since steps after the last
recorded one did not run and a person must look.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from service.clock import Clock
from service.flow.executor import Executor, RunRequest
from service.flow.ports import Escalation
from service.inventory import UnknownHosts
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
        record = await store.get_execution(execution_id)
        assert record is not None
        request = resumable(record, rules())
        now = clock.now()
        if request is not None:
            await store.add_event(execution_id, now, "resume", "resumed after a restart")
            await store.set_state(execution_id, ExecutionState.QUEUED, now, "resumed after a restart")
            executor.start(request, queued=False)
            log.warning("execution resumed after a restart", extra={"execution_id": execution_id})
            continue
        await store.set_state(execution_id, ExecutionState.INTERRUPTED, now, _INTERRUPTED)
        await escalation.escalate(execution_id, f"interrupted: {_INTERRUPTED}", "critical")
        log.warning("execution interrupted by a restart", extra={"execution_id": execution_id})


def resumable(record: ExecutionRecord, rules: RuleSet) -> RunRequest | None:
    """The run to start again, or None when it cannot be resumed."""
    execution, occurrence = record.execution, record.occurrence
    playbook = rules.playbooks.get(execution["playbook"])
    rule = rules.get(execution["rule"])
    if playbook is None or rule is None or occurrence is None:
        return None
    # resume what never started, or what the playbook promised is safe to repeat; and only with
    # the playbook version the run was admitted with
    never_started = execution["started_at"] is None and not record.steps
    if not (never_started or playbook.playbook.idempotent) or playbook.version != execution["playbook_version"]:
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
        hosts=hosts,
        inventory=rules.inventory,
    )
