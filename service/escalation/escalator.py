"""Escalation: when automation cannot fix it, a person must know at once, with the facts.

An escalation is recorded in the store with its first level's messages, one per channel, in the
same transaction (so nothing is lost to a crash and the run that escalates never waits for a
network). A background worker delivers the outbox with backoff; each message's dedup key makes
"once per level per channel" a table constraint, across restarts too. Later levels are APScheduler
date jobs, re-created from the store at start-up. While an escalation is open its Alertmanager alert
is re-posted before its `endsAt` passes; closing it (acknowledged through the API, its approval
decided, or its original alert resolved) sends a closing message to every channel that may have
shown it, and Alertmanager gets the alert with `endsAt` = the closing time. docs/escalation.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

import aiohttp
from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from service.clock import Clock
from service.escalation.channels import Channel, DeliveryError, Retry, build_channels
from service.escalation.messages import Links, Notice, escalation_facts
from service.metrics import Metrics
from service.settings import Secrets, Settings
from service.store import (
    Delivery,
    EscalationStore,
    NewEscalation,
    OpenEscalation,
    OutboxMessage,
)

log = logging.getLogger("remediator.escalation")

_BATCH = 50
_IDLE_S = 5.0  # a missed wake-up delays a delivery at most this long
_SEND_BACKSTOP_S = 5.0  # beyond the channel's own timeout


@dataclass(frozen=True)
class Policy:
    """Where escalations go and when, resolved from the settings once per app."""

    links: Links
    channels: Mapping[str, Channel]
    retries: Mapping[str, Retry]
    levels: tuple[tuple[float, tuple[str, ...]], ...]  # (delay seconds, channel names); level 0 at once
    alert_labels: Mapping[str, str]
    resend_interval: float

    @classmethod
    def from_settings(cls, settings: Settings, secrets: Secrets, clock: Clock) -> Policy:
        channels, retries = build_channels(settings, secrets, clock)
        escalation = settings.escalation
        return cls(
            links=Links(settings.external_url),
            channels=channels,
            retries=retries,
            levels=tuple((delay, tuple(names)) for delay, names in escalation.level_channels()),
            alert_labels=dict(escalation.alertmanager.labels),
            resend_interval=escalation.alertmanager.resend_interval,
        )


class Escalator:
    def __init__(self, store: EscalationStore, clock: Clock, policy: Policy, metrics: Metrics) -> None:
        self._store = store
        self._clock = clock
        self._policy = policy
        self._metrics = metrics
        self._wake = asyncio.Event()
        # Deliveries and re-posts never overlap, so an Alertmanager re-post read before a close
        # always lands before the closing post, never after it.
        self._pass = asyncio.Lock()
        self._session: aiohttp.ClientSession | None = None
        self._scheduler: AsyncIOScheduler | None = None

    # --- what the flow calls ------------------------------------------------------------------

    async def escalate(self, execution_id: str, reason: str, severity: str) -> None:
        """Record the escalation and queue its first level; returns once committed, never sends.

        An execution already escalated and not yet acknowledged is not escalated again (one incident,
        one page): the later reason goes on its timeline."""
        if any(e.kind == "failed" for e in await self._store.open_escalations(execution_id)):
            await self._store.add_event(
                execution_id, self._clock.now(), "escalation", f"(already escalated) {reason}", {"severity": severity}
            )
            return
        await self._open(execution_id, "failed", reason, severity, None)
        # Start-up recovery escalates the runs it marks interrupted: settle their approvals now
        # rather than at the next periodic pass.
        await self._settle_approvals()

    async def approval_requested(self, execution_id: str, prompt: str, deadline: datetime) -> None:
        # A run resumed after a restart asks again for the request it already escalated.
        if any(e.kind == "approval" for e in await self._store.open_escalations(execution_id)):
            return
        await self._open(execution_id, "approval", f"approval needed: {prompt}", "warning", (prompt, deadline))

    async def approval_decided(self, execution_id: str, decision: str, by: str) -> None:
        for escalation in await self._store.open_escalations(execution_id):
            if escalation.kind == "approval":
                await self._close(escalation, "closed", by, f"approval {decision} by {by}")

    async def acknowledge(self, execution_id: str, by: str) -> int:
        """A person has it: close every open escalation of the execution; how many were open."""
        closed = 0
        for escalation in await self._store.open_escalations(execution_id):
            closed += await self._close(escalation, "acknowledged", by, "acknowledged through the API")
        return closed

    async def original_resolved(self, occurrence_id: int) -> int:
        """The alert behind the executions resolved: close their escalations (approvals stay open:
        a run still waits on them), by the same rule as the periodic pass: only those opened before
        the resolve was recorded (a run that escalated after its alert had resolved, as one a restart
        interrupted while the alert resolved, still failed: someone should hear so)."""
        closed = 0
        for escalation in await self._store.open_escalations():
            if escalation.occurrence_id == occurrence_id and _resolved_since_opened(escalation):
                closed += await self._close(escalation, "closed", "alertmanager", "the original alert resolved")
        return closed

    # --- running: the worker and the level scheduler --------------------------------------------

    @contextlib.asynccontextmanager
    async def running(self, scheduler: AsyncIOScheduler) -> AsyncIterator[None]:
        """Deliver the outbox and run the levels (on the app's scheduler) while inside; levels open
        before a restart are scheduled again (a level whose time passed meanwhile is queued at once)."""
        if not self._policy.channels:
            log.warning("no escalation channels configured: escalations are only recorded in reports")
        try:
            async with aiohttp.ClientSession() as session:
                self._session, self._scheduler = session, scheduler
                for escalation in await self._store.open_escalations():
                    self._schedule_levels(
                        escalation.execution_id, escalation.id, escalation.opened_at, escalation.level + 1
                    )
                worker = asyncio.create_task(self._work(), name="escalation-outbox")
                try:
                    yield
                finally:
                    worker.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await worker
        finally:
            self._session = self._scheduler = None

    async def deliver_due(self) -> int:
        """Send every message that is due, concurrently (each bounded by its channel's timeout)."""
        async with self._pass:
            due = await self._store.due_deliveries(self._clock.now(), _BATCH)
            await asyncio.gather(*(self._deliver(delivery) for delivery in due))
            return len(due)

    async def refresh(self) -> None:
        """The periodic pass: close escalations whose alert resolved since they opened, settle
        approvals their run left pending, and re-post open alerts to Alertmanager."""
        async with self._pass:
            for escalation in await self._store.open_escalations():
                if _resolved_since_opened(escalation):
                    await self._close(escalation, "closed", "alertmanager", "the original alert resolved")
            await self._settle_approvals()
            for delivery in await self._store.delivered_notifications():
                channel = self._policy.channels.get(delivery.channel)
                if channel is not None and channel.type == "alertmanager":
                    await self._resend(channel, delivery)

    async def _work(self) -> None:
        next_refresh = self._clock.monotonic()  # at once: after a restart open alerts need a re-post
        while True:
            self._wake.clear()
            wait = _IDLE_S
            try:
                for _ in range(100):  # a backlog drains in batches; the loop gives others a turn after
                    if await self.deliver_due() < _BATCH:
                        break
                if self._clock.monotonic() >= next_refresh:
                    next_refresh = self._clock.monotonic() + self._policy.resend_interval
                    await self.refresh()
                wait = min(wait, next_refresh - self._clock.monotonic())
                upcoming = await self._store.next_delivery_at()
                if upcoming is not None:
                    wait = min(wait, (upcoming - self._clock.now()).total_seconds())
            except Exception:
                log.exception("escalation delivery pass failed; retrying")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(wait, 0.01))

    # --- opening and closing ------------------------------------------------------------------

    async def _open(
        self, execution_id: str, kind: str, reason: str, severity: str, approval: tuple[str, datetime] | None
    ) -> None:
        record = await self._store.get_execution(execution_id)
        if record is None:
            log.error("escalation for an unknown execution", extra={"execution_id": execution_id, "reason": reason})
            return
        now = self._clock.now()
        escalation_id = f"esc-{int(now.timestamp() * 1000):012x}-{secrets.token_hex(4)}"
        facts = escalation_facts(
            record, kind, reason, severity, now, approval, self._policy.links, self._policy.alert_labels
        )
        level0 = self._policy.levels[0][1] if self._policy.levels else ()
        await self._store.open_escalation(
            NewEscalation(escalation_id, execution_id, kind, reason, severity, now, facts),
            [self._message(Notice(escalation_id, name, facts, 0)) for name in level0],
            {
                "escalation_id": escalation_id,
                "kind": kind,
                "severity": severity,
                "report_url": facts["report_url"],
                "channels": list(level0),
            },
        )
        self._schedule_levels(execution_id, escalation_id, now, 1)
        self._wake.set()
        log.warning(
            "escalated",
            extra={
                "execution_id": execution_id,
                "escalation_id": escalation_id,
                "reason": reason,
                "severity": severity,
            },
        )

    async def _close(self, escalation: OpenEscalation, state: str, by: str, reason: str) -> int:
        now = self._clock.now()
        closing = {"state": state, "by": by, "reason": reason, "closed_at": now.isoformat()}
        messages = [
            self._message(Notice(escalation.id, name, escalation.facts, None, closing))
            for name in self._policy.channels
        ]
        if not await self._store.close_escalation(escalation.id, state, by, reason, now, messages):
            return 0  # closed meanwhile by someone else
        if self._scheduler is not None:
            for level in range(1, len(self._policy.levels)):
                with contextlib.suppress(JobLookupError):
                    self._scheduler.remove_job(_job_id(escalation.id, level))
        self._wake.set()
        log.info("escalation closed", extra={"execution_id": escalation.execution_id, "state": state, "by": by})
        return 1

    def _schedule_levels(self, execution_id: str, escalation_id: str, opened_at: datetime, first: int) -> None:
        if self._scheduler is None:
            return  # not serving: `running` schedules what is open when it starts
        for level in range(first, len(self._policy.levels)):
            self._scheduler.add_job(
                self._fire_level,
                "date",
                run_date=opened_at + timedelta(seconds=self._policy.levels[level][0]),
                args=[execution_id, escalation_id, level],
                id=_job_id(escalation_id, level),
                replace_existing=True,
                misfire_grace_time=None,  # however late (a restart, a busy loop): still tell someone
            )

    async def _fire_level(self, execution_id: str, escalation_id: str, level: int) -> None:
        escalation = next((e for e in await self._store.open_escalations(execution_id) if e.id == escalation_id), None)
        if escalation is None:
            return  # acknowledged or closed before this level was due
        delay, names = self._policy.levels[level]
        note = f"level {level}: not acknowledged within {delay:g}s, notifying {', '.join(names)}"
        messages = [self._message(Notice(escalation_id, name, escalation.facts, level)) for name in names]
        if await self._store.enqueue_level(escalation_id, level, messages, self._clock.now(), note):
            self._wake.set()
            log.warning(note, extra={"execution_id": execution_id, "escalation_id": escalation_id})

    async def _settle_approvals(self) -> None:
        """Requests whose execution ended without a decision (a restart marked it interrupted, or it
        was cancelled): past their deadline they are denied, otherwise expired, and never reopen."""
        now = self._clock.now()
        for approval in await self._store.orphaned_approvals():
            decision, by = ("denied", "timeout") if approval.deadline <= now else ("expired", "the remediator")
            if await self._store.decide_approval(approval.id, decision, by, now):
                await self.approval_decided(approval.execution_id, decision, by)

    # --- delivery -----------------------------------------------------------------------------

    async def _deliver(self, delivery: Delivery) -> None:
        what = "closing message" if delivery.kind == "close" else f"level {delivery.level} notification"
        channel = self._policy.channels.get(delivery.channel)
        attempts = delivery.attempts + 1
        try:
            if channel is None:
                raise DeliveryError("the channel is no longer configured")
            assert self._session is not None, "deliveries run inside running()"
            async with asyncio.timeout(channel.timeout + _SEND_BACKSTOP_S):
                await channel.send(self._session, delivery.payload)
        except Exception as exc:  # any failure of one message must not stop the others
            error = str(exc) if isinstance(exc, DeliveryError) else f"{type(exc).__name__}: {exc}"
            retry = self._policy.retries.get(delivery.channel)
            delay = None if retry is None else retry.delay(attempts)
            note = None
            if delay is None:
                note = f"gave up sending the {what} to {delivery.channel} after {attempts} attempts: {error}"
            elif attempts == 1:
                note = f"the {what} to {delivery.channel} failed, retrying with backoff: {error}"
            self._metrics.escalation_delivery_failures.labels(delivery.channel).inc()
            self._metrics.escalation_deliveries.labels(
                delivery.channel, "failed" if delay is not None else "abandoned"
            ).inc()
            now = self._clock.now()
            retry_at = None if delay is None else now + timedelta(seconds=delay)
            await self._store.delivery_failed(delivery, now, error, retry_at, note)
            log.warning(
                "escalation delivery failed",
                extra={
                    "execution_id": delivery.execution_id,
                    "channel": delivery.channel,
                    "error": error,
                    "attempts": attempts,
                },
            )
            return
        self._metrics.escalation_deliveries.labels(delivery.channel, "delivered").inc()
        after = f" after {attempts} attempts" if attempts > 1 else ""
        await self._store.delivery_succeeded(delivery, self._clock.now(), f"{what} sent to {delivery.channel}{after}")

    async def _resend(self, channel: Channel, delivery: Delivery) -> None:
        """Keep an open alert firing in Alertmanager; a failed re-post is retried at the next pass."""
        assert self._session is not None, "re-posts run inside running()"
        try:
            async with asyncio.timeout(channel.timeout + _SEND_BACKSTOP_S):
                await channel.send(self._session, delivery.payload)
        except Exception as exc:
            self._metrics.escalation_delivery_failures.labels(channel.name).inc()
            self._metrics.escalation_deliveries.labels(channel.name, "resend_failed").inc()
            log.warning("alert re-post failed", extra={"channel": channel.name, "error": str(exc)})
            return
        self._metrics.escalation_deliveries.labels(channel.name, "resent").inc()

    def _message(self, notice: Notice) -> OutboxMessage:
        """The outbox row of one notice, in the shape its channel sends."""
        return OutboxMessage(
            dedup_key=notice.dedup_key,
            channel=notice.channel,
            kind="close" if notice.closing is not None else "notify",
            level=-1 if notice.level is None else notice.level,
            payload=self._policy.channels[notice.channel].payload(notice),
        )


def _job_id(escalation_id: str, level: int) -> str:
    return f"{escalation_id}/level-{level}"


def _resolved_since_opened(escalation: OpenEscalation) -> bool:
    # An alert that had already resolved when the run escalated does not close it: the run still
    # failed, and someone should hear so and acknowledge it.
    return (
        escalation.kind != "approval"
        and escalation.occurrence_status == "resolved"
        and escalation.occurrence_seen_at is not None
        and escalation.occurrence_seen_at >= escalation.opened_at
    )
