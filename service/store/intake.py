"""Intake's writes and the dispatcher's queue: notifications, alert occurrences, alert events."""

from __future__ import annotations

import functools
import json
import sqlite3
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from pydantic_core import to_json

from service.alerts.webhook import WebhookAlert, WebhookNotification
from service.store.engine import SQLiteEngine
from service.store.records import AlertEvent, NotificationReceipt, Occurrence, OccurrenceSource
from service.store.rows import occurrence_row
from service.times import timestamp

_INSERT_NOTIFICATION = (
    "INSERT INTO notifications (received_at, receiver, status, group_key, external_url, alert_count, body)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)"
)


# A re-send of a known occurrence updates it; previous_status = status keeps the status before this
# delivery, since SET reads the row as it was. Status moves forward only: a "firing" for an
# occurrence already resolved (an Alertmanager HA pair's late second copy, a stale re-send) leaves
# it resolved, with the ends_at, labels and annotations of its resolve; the delivery still counts
# (receive_count, last_received_at). RETURNING reads the row as this statement left it, so a firing
# delivery that returns "resolved" was stale. `source` is written on insert only; `matched` once set
# stays set (some rule wanted a delivery of the occurrence).
_STALE = "(status = 'resolved' AND excluded.status = 'firing')"
_UPSERT_OCCURRENCE = (
    "INSERT INTO occurrences (fingerprint, starts_at, alertname, labels, annotations, generator_url, status,"
    " ends_at, first_received_at, last_received_at, receive_count, source, matched)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1, ?, ?)"
    " ON CONFLICT (fingerprint, starts_at) DO UPDATE SET previous_status = status,"
    " matched = max(matched, excluded.matched),"
    f" status = CASE WHEN {_STALE} THEN status ELSE excluded.status END,"
    f" ends_at = CASE WHEN {_STALE} THEN ends_at ELSE excluded.ends_at END,"
    f" labels = CASE WHEN {_STALE} THEN labels ELSE excluded.labels END,"
    f" annotations = CASE WHEN {_STALE} THEN annotations ELSE excluded.annotations END,"
    " last_received_at = excluded.last_received_at, receive_count = receive_count + 1"
    " RETURNING id, previous_status, receive_count, status, source"
)


_INSERT_ALERT_EVENT = (
    "INSERT INTO alert_events (notification_id, occurrence_id, status, previous_status, dispatched_at)"
    " VALUES (?, ?, ?, ?, ?)"
)


@functools.lru_cache(maxsize=4096)
def _alert_time(value: datetime) -> tuple[datetime, str]:
    """An alert's time in UTC, and as stored. Cached: Alertmanager re-sends an alert's times with
    every notification of its group, and formatting one costs more than its cache lookup."""
    utc = value.astimezone(UTC)
    return utc, timestamp(utc)


class IntakeSQL(SQLiteEngine):
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
        alerts no rule wants whose occurrence this notification brought first."""
        received = timestamp(received_at)
        notification_row = (
            received,
            notification.receiver,
            notification.status,
            notification.groupKey,
            notification.externalURL,
            len(notification.alerts),
            body.decode("utf-8"),
        )
        # Everything but the statements is prepared before the transaction: a batch's statements
        # then run back to back, and a batch re-run after a neighbour failed repeats only them.
        if wanted is None:
            wanted = [True] * len(notification.alerts)
        occurrences: list[tuple[WebhookAlert, datetime, datetime | None, tuple[Any, ...], bool]] = []
        for alert, rule_wants in zip(notification.alerts, wanted, strict=True):
            starts_at, starts_at_text = _alert_time(alert.startsAt)
            ended = alert.ends_at
            ends_at, ends_at_text = (None, None) if ended is None else _alert_time(ended)
            row = (
                alert.fingerprint,
                starts_at_text,
                alert.labels.get("alertname", ""),
                # pydantic's encoder: a fifth of json.dumps's time; keys stay in the order received
                # (sorted, from Alertmanager: Go marshals maps sorted)
                to_json(alert.labels).decode(),
                to_json(alert.annotations).decode(),
                alert.generatorURL,
                alert.status,
                ends_at_text,
                received,
                received,
                source,
                int(rule_wants),
            )
            occurrences.append((alert, starts_at, ends_at, row, rule_wants))

        def insert(conn: sqlite3.Connection) -> NotificationReceipt:
            notification_id = conn.execute(_INSERT_NOTIFICATION, notification_row).lastrowid
            assert notification_id is not None
            events = []
            unmatched = []
            for index, (alert, starts_at, ends_at, row, rule_wants) in enumerate(occurrences):
                occurrence_id, previous_status, receive_count, status, first_source = conn.execute(
                    _UPSERT_OCCURRENCE, row
                ).fetchone()
                # a stale firing left the occurrence resolved: nothing to decide, never a run
                stale = alert.status == "firing" and status == "resolved"
                pending = not stale and (rule_wants or (alert.status == "resolved" and previous_status == "firing"))
                event_id = conn.execute(
                    _INSERT_ALERT_EVENT,
                    (notification_id, occurrence_id, alert.status, previous_status, None if pending else received),
                ).lastrowid
                assert event_id is not None
                if not rule_wants and receive_count == 1:
                    unmatched.append(index)
                if not pending:
                    continue
                occurrence = Occurrence(
                    id=occurrence_id,
                    fingerprint=alert.fingerprint,
                    starts_at=starts_at,
                    alertname=alert.labels.get("alertname", ""),
                    labels=alert.labels,
                    annotations=alert.annotations,
                    generator_url=alert.generatorURL,
                    status=alert.status,
                    ends_at=ends_at,
                    receive_count=receive_count,
                    source=first_source,
                )
                events.append(
                    AlertEvent(
                        id=event_id,
                        notification_id=notification_id,
                        status=alert.status,
                        previous_status=previous_status,
                        occurrence=occurrence,
                        common_labels=notification.commonLabels,
                        external_url=notification.externalURL,
                    )
                )
            return NotificationReceipt(notification_id, len(occurrences), tuple(events), tuple(unmatched))

        return await self.write(insert)

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
