"""Admission: for each (rule, alert occurrence) decide run, repeat or refuse, and say why.

Alertmanager re-sends every firing alert on each group change and repeat_interval, retries on 5xx,
and two replicas deliver the same alert twice: one occurrence must make one run. Beyond dedup, the
rule's limits (cooldown, runs per window, the concurrency mode per target: service.flow.modes) and a
global storm guard keep automation from making an incident worse. Every decision carries a reason;
refusals are recorded as executions in state `refused`, so they appear in reports and metrics like
any run.

All state comes from the store (so limits hold across restarts) and time from the injected clock.
A window of W seconds counts the runs created in (now - W, now]: a run leaves it exactly W after it
started, and a cooldown of C allows the next run exactly C after the last one.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from service.flow import modes
from service.flow.verdict import Decision, Verdict
from service.rules.ruleset import RuleMatch
from service.store import TERMINAL_STATES, AdmissionStore

__all__ = ["Decision", "StormGuard", "Verdict", "decide", "would_admit"]


@dataclass(frozen=True)
class StormGuard:
    max_admissions: int
    window_seconds: float


async def decide(
    store: AdmissionStore,
    match: RuleMatch,
    occurrence_id: int,
    now: datetime,
    storm: StormGuard,
    dry_run: bool,
    silenced_by: str | None = None,
) -> Verdict:
    rule = match.rule.rule
    limits = rule.limits
    prior = await store.execution_for_occurrence(rule.name, occurrence_id)
    if prior is not None:
        # rerun_after: an alert still firing that long after a finished run may be tried again,
        # within the same limits as any run
        rerun = limits.rerun_after is not None and prior.state in TERMINAL_STATES
        if not rerun or (now - prior.created_at).total_seconds() < (limits.rerun_after or 0):
            return Verdict("repeat", "duplicate", f"occurrence already handled by execution {prior.id}", prior.id)
    verdict = await _limits(store, match, now, storm, dry_run, silenced_by)
    return verdict if prior is None else replace(verdict, occurrence_run=prior.occurrence_run + 1)


async def would_admit(
    store: AdmissionStore, match: RuleMatch, now: datetime, storm: StormGuard, dry_run: bool, silenced_by: str | None
) -> Verdict:
    """What admission would decide now for a new occurrence of this match, reading the store and
    writing nothing (``simulate``, ``remediator explain``): the same pauses, shadow mode, storm guard,
    cooldown, budget and concurrency as :func:`decide`; only dedup, which needs a stored occurrence,
    is left out."""
    return await _limits(store, match, now, storm, dry_run, silenced_by)


async def _limits(
    store: AdmissionStore, match: RuleMatch, now: datetime, storm: StormGuard, dry_run: bool, silenced_by: str | None
) -> Verdict:
    """Pauses, shadow mode, the storm guard and the rule's limits, in that order."""
    rule = match.rule.rule
    limits = rule.limits
    if silenced_by is not None:
        return Verdict("refuse", "paused", f"automation paused by {silenced_by}")
    for pause in await store.active_pauses(now):
        if pause["rule"] in ("*", rule.name) and pause["target"] in ("*", match.target):
            return Verdict(
                "refuse",
                "paused",
                f"automation paused for rule {pause['rule']}, target {pause['target']} by {pause['created_by']}: "
                f"{pause['reason']}",
            )
    if dry_run or rule.mode == "shadow":
        why = "dry_run is on" if dry_run else "the rule is in shadow mode"
        return Verdict("shadow", "shadow", f"{why}: recorded what would run, ran nothing")
    admitted = await store.admissions_since(now - timedelta(seconds=storm.window_seconds))
    if admitted >= storm.max_admissions:
        return Verdict(
            "refuse",
            "storm",
            f"storm guard: {admitted} runs admitted in the last {storm.window_seconds:g}s "
            f"(limit {storm.max_admissions})",
        )
    history = await store.target_history(rule.name, match.target, now - timedelta(seconds=limits.window))
    if history.last_run_at is not None:
        since_last = (now - history.last_run_at).total_seconds()
        if since_last < limits.cooldown:
            return Verdict(
                "refuse",
                "cooldown",
                f"cooldown: last run for {match.target} {since_last:.0f}s ago, cooldown is {limits.cooldown:g}s",
            )
    if history.runs_in_window >= limits.max_runs:
        return Verdict(
            "refuse",
            "budget_spent",
            f"budget spent: {history.runs_in_window} runs for {match.target} in the last {limits.window:g}s "
            f"(max_runs {limits.max_runs}); a person must look",
        )
    if history.active:
        busy = modes.when_active(match, history.active)
        if busy is not None:
            return busy
    return Verdict("run", "admitted", "admitted")
