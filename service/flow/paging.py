"""Paging: whether a refusal tells a person now, later, or not at all.

The point of the remediator is fewer pages, so a page is decided per incident, not per alert
(docs/escalation.md, "When a person is paged"):
- A refusal about a target whose run is running, or verified a fix less than `grace` ago while
  the refused alert was already firing, is an incident already in hand: it is shown on that run,
  and pages only if its alert still fires when the run is done and `grace` has passed (a second
  router reporting the same NATS outage stops firing once NATS is back). An alert that started
  after the fix was verified is a new outage, not the one in hand: it is not held back.
- A refusal about a target with an open page (a run's failure, an earlier refusal) adds to that
  page's run instead of paging again: the person already has the incident.
- Otherwise refusals page at most once per rule, target and the rule's window; a storm at most once
  per storm window, across rules.
A refused occurrence that arrives again is a repeat of its refusal (admission), never a new page.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from service.clock import Clock
from service.flow.ports import Escalation
from service.rules.ruleset import RuleSet
from service.store import PagingStore
from service.times import parse_timestamp, timestamp

log = logging.getLogger("remediator.paging")

_DUE_BATCH = 50
_DEFAULT_WINDOW_S = 3600.0  # a refusal whose rule was removed by a reload since
_DEFAULT_SEVERITY = "critical"


@dataclass(frozen=True)
class Refusal:
    """One recorded refusal that a rule wants a person to hear about."""

    execution_id: str
    rule: str
    target: str
    alertname: str
    reason: str  # the admission reason key: cooldown, budget_spent, busy, storm, ...
    detail: str
    window_s: float
    severity: str
    alert_started_at: datetime


class Pager:
    def __init__(
        self,
        *,
        store: PagingStore,
        clock: Clock,
        escalation: Escalation,
        rules: Callable[[], RuleSet],
        grace_s: float,
        storm_window_s: float,
    ) -> None:
        self._store = store
        self._clock = clock
        self._escalation = escalation
        self._rules = rules
        self._grace = timedelta(seconds=grace_s)
        self._storm_window = timedelta(seconds=storm_window_s)

    async def refused(self, refusal: Refusal) -> str:
        """Page now, later or never; returns which ("paged", "waiting", "quiet")."""
        now = self._clock.now()
        if refusal.reason == "storm":
            # about every rule at once: once per storm, whatever any target is doing
            if await self._store.count_refusals(None, None, "storm", now - self._storm_window, 2) > 1:
                await self._note(refusal.execution_id, now, "no page: this storm was paged already")
                return "quiet"
            await self._page(refusal)
            return "paged"
        return await self._consider(refusal, now)

    async def page_due(self) -> int:
        """The periodic pass: the refusals whose wait is over page if their alert still fires."""
        now = self._clock.now()
        handled = 0
        for execution_id in await self._store.pages_due(now, _DUE_BATCH):
            await self._store.set_page_due(execution_id, None)
            record = await self._store.get_execution(execution_id)
            if record is None:
                continue  # pruned meanwhile
            handled += 1
            if (record.occurrence or {}).get("status") == "resolved":
                await self._note(execution_id, now, "no page: the alert resolved while its target was in hand")
                continue
            execution = record.execution
            rule = self._rules().get(execution["rule"])
            refusal = Refusal(
                execution_id=execution_id,
                rule=execution["rule"],
                target=execution["target"],
                alertname=execution["alertname"],
                reason=execution["refusal"] or "refused",
                detail=execution["reason"] or "",
                window_s=rule.rule.limits.window if rule is not None else _DEFAULT_WINDOW_S,
                severity=rule.rule.severity if rule is not None else _DEFAULT_SEVERITY,
                alert_started_at=parse_timestamp((record.occurrence or {}).get("starts_at")) or now,
            )
            await self._consider(refusal, now)
        return handled

    async def _consider(self, refusal: Refusal, now: datetime) -> str:
        store, target = self._store, refusal.target
        activity = await store.target_activity(target, now - self._grace)
        if (
            activity is not None
            and activity.finished_at is not None
            and refusal.alert_started_at > activity.finished_at
        ):
            activity = None  # a new outage since the fix: not the incident in hand
        if activity is not None:
            if activity.kind == "running" or activity.finished_at is None:
                due, doing = now + self._grace, "is running"
            else:
                due, doing = activity.finished_at + self._grace, f"verified a fix at {timestamp(activity.finished_at)}"
            await store.set_page_due(refusal.execution_id, due)
            await self._note(
                activity.execution_id,
                now,
                f"{refusal.alertname} refused while this run {doing}: {refusal.detail} (execution"
                f" {refusal.execution_id}; it pages only if the alert still fires at {timestamp(due)})",
            )
            await self._note(
                refusal.execution_id,
                now,
                f"no page now: run {activity.execution_id} for {target} {doing}; a page follows at"
                f" {timestamp(due)} only if this alert still fires",
            )
            return "waiting"
        open_page = await store.open_page_for_target(target)
        if open_page is not None:
            also = f"also refused: {refusal.alertname} ({refusal.detail}), execution {refusal.execution_id}"
            await self._note(open_page, now, also)
            await self._note(refusal.execution_id, now, f"no page: execution {open_page}'s page about {target} is open")
            return "quiet"
        paged = await store.refusal_paged_since(refusal.rule, target, now - timedelta(seconds=refusal.window_s))
        if paged is not None:
            await self._note(
                refusal.execution_id,
                now,
                f"no page: a refusal for rule {refusal.rule}, target {target} paged within the rule's window"
                f" ({refusal.window_s:g}s): execution {paged}",
            )
            return "quiet"
        await self._page(refusal)
        return "paged"

    async def _page(self, refusal: Refusal) -> None:
        await self._escalation.escalate(refusal.execution_id, f"refused: {refusal.detail}", refusal.severity)

    async def _note(self, execution_id: str, at: datetime, message: str) -> None:
        await self._store.add_event(execution_id, at, "page", message)
        log.info(message, extra={"execution_id": execution_id})
