"""Intake's writes and the dispatcher's queue: notifications, alert occurrences, alert events.

`acknowledge_repeated_body` and `acknowledge_resend` answer a notification whose every alert is a
pure re-send of an occurrence the store remembers committed (service.store.remembered) without a
commit: its deliveries wait, one entry per occurrence however often it is re-sent, and
`write_resends` writes them in one transaction later. `record_notification` commits everything else
before it returns. The statements themselves are in service.store.deliveries.
"""

from __future__ import annotations

import functools
import json
import logging
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path

from service.alerts.webhook import WebhookNotification
from service.store.deliveries import (
    INSERT_NOTIFICATION,
    UPSERT_OCCURRENCE,
    add_deliveries,
    alert_time,
    delivery,
    insert_event,
    notification_row,
    pending_event,
)
from service.store.engine import SQLiteEngine, Synchronous
from service.store.errors import StoreError
from service.store.records import AlertEvent, NotificationReceipt, Occurrence, OccurrenceSource
from service.store.remembered import (
    DEFAULT_LIMIT,
    Known,
    OccurrenceKey,
    RememberedOccurrences,
    Resend,
    SeenBody,
    body_digest,
)
from service.store.rows import occurrence_row
from service.times import timestamp

log = logging.getLogger("remediator.store")


class IntakeSQL(SQLiteEngine):
    def __init__(
        self,
        path: Path,
        synchronous: Synchronous = "full",
        *,
        monotonic: Callable[[], float] = time.monotonic,
        remembered: int = DEFAULT_LIMIT,
    ) -> None:
        """`remembered`: how many committed occurrences to remember for re-sends (0: none)."""
        super().__init__(path, synchronous, monotonic=monotonic)
        self._remembered = RememberedOccurrences(remembered)

    @property
    def remembered(self) -> RememberedOccurrences:
        return self._remembered

    async def record_notification(
        self,
        notification: WebhookNotification,
        body: bytes,
        received_at: datetime,
        wanted: Sequence[bool] | None = None,
        source: OccurrenceSource = "webhook",
    ) -> NotificationReceipt:
        """Store the notification and each alert's delivery. ``wanted[i]`` says whether a rule wants
        alert i (None: assume every one): an alert no rule wants, and which is not a firing ->
        resolved transition, has nothing to dispatch and is stored as dispatched at receipt. So has
        a stale "firing" for an occurrence already resolved, which leaves it resolved (status moves
        forward only). ``source`` is how an occurrence this notification brings first came (a
        webhook, or the reconciler); an occurrence already stored keeps its own. The receipt names the
        alerts no rule wants whose occurrence this notification brought first.

        Deliveries of these occurrences acknowledged from memory and still waiting are written first,
        in the same commit: counts and events stay in the order they came."""
        if wanted is None:
            wanted = [True] * len(notification.alerts)
        deliveries = [delivery(alert, wants) for alert, wants in zip(notification.alerts, wanted, strict=True)]
        received = timestamp(received_at)
        notification_values = notification_row(notification, body, received)
        rows = [
            (
                d.alert.fingerprint,
                d.key[1],
                d.alert.labels.get("alertname", ""),
                d.labels.decode(),
                d.annotations.decode(),
                d.alert.generatorURL,
                d.alert.status,
                d.ends_at_text,
                received,
                received,
                source,
                int(d.wanted),
            )
            for d in deliveries
        ]

        # Forgotten before the commit starts, remembered once it is durable: while it is in flight a
        # re-send of the state it replaces is committed too, in order, as it would be without memory.
        # Whether a rule wants their waiting deliveries: what it says of this one.
        earlier_wanted: dict[int, bool] = {}
        for d in deliveries:
            for known in self._remembered.forget((d.key,)):
                earlier_wanted[known.occurrence_id] = d.wanted
        earlier = self._remembered.take_waiting(earlier_wanted)

        def insert(conn: sqlite3.Connection) -> tuple[NotificationReceipt, list[tuple[OccurrenceKey, Known]], bool]:
            events: list[AlertEvent] = []
            if earlier:
                events.extend(add_deliveries(earlier, lambda resend: earlier_wanted[resend.occurrence_id], conn))
            notification_id = conn.execute(INSERT_NOTIFICATION, notification_values).lastrowid
            assert notification_id is not None
            unmatched = []
            stored = []
            all_seen_before = True  # every occurrence was stored before: a change, likely re-sent as it is now
            for index, (d, row) in enumerate(zip(deliveries, rows, strict=True)):
                alert = d.alert
                occurrence_id, previous_status, receive_count, status, first_source = conn.execute(
                    UPSERT_OCCURRENCE, row
                ).fetchone()
                # a stale firing left the occurrence resolved: nothing to decide, never a run
                stale = alert.status == "firing" and status == "resolved"
                pending = not stale and (d.wanted or (alert.status == "resolved" and previous_status == "firing"))
                event_id = insert_event(
                    conn, notification_id, occurrence_id, alert.status, previous_status, pending, received
                )
                if receive_count == 1:
                    all_seen_before = False
                    if not d.wanted:
                        unmatched.append(index)
                if not stale:  # the occurrence is now stored in this delivery's state
                    stored.append((d.key, Known(occurrence_id, event_id, d.state)))
                if not pending:
                    continue
                ended = alert.ends_at
                occurrence = Occurrence(
                    id=occurrence_id,
                    fingerprint=alert.fingerprint,
                    starts_at=alert_time(alert.startsAt)[0],
                    alertname=alert.labels.get("alertname", ""),
                    labels=alert.labels,
                    annotations=alert.annotations,
                    generator_url=alert.generatorURL,
                    status=alert.status,
                    ends_at=None if ended is None else alert_time(ended)[0],
                    receive_count=receive_count,
                    source=first_source,
                )
                events.append(
                    pending_event(event_id, notification_id, notification, alert.status, previous_status, occurrence)
                )
            receipt = NotificationReceipt(notification_id, len(rows), tuple(events), tuple(unmatched))
            return receipt, stored, all_seen_before

        try:
            receipt, stored, all_seen_before = await self.write(insert)
        except StoreError:  # nothing committed (a cancelled caller's job still commits: not here)
            self._remembered.put_back(earlier)
            raise
        for key, known in stored:
            self._remembered.remember(key, known)
        if all_seen_before and len(stored) == len(deliveries):
            # Its next copies are answered by their bytes. Not a notification that brought an
            # occurrence first: a storm of new alerts would only churn the bodies remembered.
            seen = SeenBody(notification, tuple((d.key, d.state) for d in deliveries))
            self._remembered.remember_body(body_digest(body), seen)
        return receipt

    def acknowledge_repeated_body(self, body: bytes, received_at: datetime) -> WebhookNotification | None:
        """A body seen before byte for byte (the whole notification re-sent), whose every occurrence
        is still remembered in the state it brought: acknowledged from memory as `acknowledge_resend`
        would, without validating or digesting its alerts again; returns the notification as
        validated then. None: validate it and go the usual way. Raises StoreError as
        `acknowledge_resend` does."""
        seen = self._remembered.seen_body(body_digest(body))
        if seen is None or not self._can_acknowledge(len(seen.deliveries)):
            return None
        self._acknowledge(seen, body, received_at)
        return seen.notification

    def acknowledge_resend(self, notification: WebhookNotification, body: bytes, received_at: datetime) -> bool:
        """True when every alert is a pure re-send of an occurrence remembered committed (same
        fingerprint, startsAt, status, endsAt, labels, annotations) and its delivery can wait: it
        is counted in memory and `write_resends` writes it. False: commit it (record_notification).
        Raises StoreError when the store is closed or its file was deleted or replaced: an answer
        from memory promises that the occurrence is in the store."""
        alerts = notification.alerts
        if not alerts or not self._can_acknowledge(len(alerts)):
            return False
        deliveries = []
        for alert in alerts:
            key = (alert.fingerprint, alert_time(alert.startsAt)[1])
            known = self._remembered.get(key)  # a new alert stops here, before its state is worked out
            if known is None:
                return False
            state = delivery(alert, False).state
            if known.state != state:
                return False
            deliveries.append((key, state))
        seen = SeenBody(notification, tuple(deliveries))
        self._acknowledge(seen, body, received_at)
        self._remembered.remember_body(body_digest(body), seen)
        return True

    def _can_acknowledge(self, alerts: int) -> bool:
        # after a failed commit, one that goes through says the store is healthy again
        return self._remembered.has_room(alerts) and self._last_commit_error is None

    def _acknowledge(self, seen: SeenBody, body: bytes, received_at: datetime) -> None:
        """Count each delivery in memory; `seen`'s occurrences are remembered in the state it brings."""
        self.require_writable_file()
        self.answered_without_commit()
        remembered = self._remembered
        for (key, _state), alert in zip(seen.deliveries, seen.notification.alerts, strict=True):
            known = remembered.get(key)
            assert known is not None
            remembered.delivered(key, known, received_at, alert, seen.notification, body)

    async def write_resends(self, wants: Callable[[str, Mapping[str, str]], bool]) -> tuple[AlertEvent, ...]:
        """Write the deliveries acknowledged from memory since the last call, in one transaction;
        returns the events the dispatcher has to see: of the occurrences a rule `wants` (status,
        labels) now. Deliveries whose write fails wait for the next call."""
        resends = self._remembered.take_waiting()
        if not resends:
            return ()

        def wanted(resend: Resend) -> bool:
            return wants(resend.alert.status, resend.alert.labels)

        try:
            return await self.write(functools.partial(add_deliveries, resends, wanted))
        except StoreError:
            self._remembered.put_back(resends)
            raise

    async def close(self) -> None:
        """Write the deliveries still waiting, then close: a service that stops loses none of them."""
        if self.is_open:
            try:  # queued for the dispatcher: it reads them at the next start
                await self.write_resends(lambda _status, _labels: True)
            except StoreError as exc:
                log.error(
                    "deliveries acknowledged from memory were not written",
                    extra={"error": str(exc), "occurrences": self._remembered.waiting},
                )
        await super().close()

    async def count_notifications(self) -> int:
        return await self.read(lambda conn: int(conn.execute("SELECT count(*) FROM notifications").fetchone()[0]))

    async def count_alert_events(self) -> int:
        return await self.read(lambda conn: int(conn.execute("SELECT count(*) FROM alert_events").fetchone()[0]))

    async def undispatched_alert_events(self, limit: int, after: int = 0) -> list[AlertEvent]:
        """The oldest `limit` events not yet dispatched whose id is above `after`."""

        def select(conn: sqlite3.Connection) -> list[AlertEvent]:
            rows = conn.execute(
                "SELECT e.id, e.notification_id, e.status AS event_status, e.previous_status,"
                " o.id AS occurrence_id, o.fingerprint, o.starts_at, o.alertname, o.labels, o.annotations,"
                " o.generator_url, o.status AS occurrence_status, o.ends_at, o.receive_count, o.source,"
                " n.body"
                " FROM alert_events e JOIN occurrences o ON o.id = e.occurrence_id"
                " JOIN notifications n ON n.id = e.notification_id"
                " WHERE e.dispatched_at IS NULL AND e.id > ? ORDER BY e.id LIMIT ?",
                (after, limit),
            ).fetchall()
            events = []
            for row in rows:
                body = json.loads(row["body"])
                events.append(
                    AlertEvent(
                        id=row["id"],
                        notification_id=row["notification_id"],
                        status=row["event_status"],
                        previous_status=row["previous_status"],
                        occurrence=occurrence_row(row),
                        common_labels=body.get("commonLabels", {}),
                        external_url=body.get("externalURL", ""),
                    )
                )
            return events

        return await self.read(select)

    async def mark_dispatched(self, event_ids: Sequence[int], at: datetime) -> None:
        when = timestamp(at)

        def update(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "UPDATE alert_events SET dispatched_at = ? WHERE id = ?", [(when, event_id) for event_id in event_ids]
            )

        await self.write(update)
