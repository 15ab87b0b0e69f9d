"""The statements that write alert deliveries, and the rows they take: a notification, each alert's
occurrence (UPSERT) and alert event, and the deliveries acknowledged from memory written later
(service.store.remembered). Prepared outside any transaction where they can be, so a batch re-run
after a neighbour failed repeats only its statements. IntakeSQL (service.store.intake) decides what
to write and when.
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, NamedTuple

from service.alerts.webhook import WebhookAlert, WebhookNotification
from service.store.records import AlertEvent, Occurrence
from service.store.remembered import OccurrenceKey, Resend, alert_state, labels_json
from service.store.rows import occurrence_row
from service.times import timestamp

INSERT_NOTIFICATION = (
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
UPSERT_OCCURRENCE = (
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


# Deliveries acknowledged from memory: the occurrence is unchanged but for its delivery count and
# last-seen time (previous_status = status, as the UPSERT leaves a re-send).
_ADD_DELIVERIES = (
    "UPDATE occurrences SET previous_status = status, receive_count = receive_count + ?,"
    " last_received_at = max(last_received_at, ?) WHERE id = ?"
    " RETURNING id AS occurrence_id, fingerprint, starts_at, alertname, labels, annotations, generator_url,"
    " status AS occurrence_status, ends_at, receive_count, source"
)


_INSERT_ALERT_EVENT = (
    "INSERT INTO alert_events (notification_id, occurrence_id, status, previous_status, dispatched_at)"
    " VALUES (?, ?, ?, ?, ?)"
)


@functools.lru_cache(maxsize=4096)
def alert_time(value: datetime) -> tuple[datetime, str]:
    """An alert's time in UTC, and as stored. Cached: Alertmanager re-sends an alert's times with
    every notification of its group, and formatting one costs more than its cache lookup."""
    utc = value.astimezone(UTC)
    return utc, timestamp(utc)


class Delivery(NamedTuple):
    """One alert of a notification as the memory and the statements need it, prepared before any
    transaction (a batch re-run after a neighbour failed repeats only its statements). A tuple: it
    is made for every alert of every request."""

    alert: WebhookAlert
    key: OccurrenceKey
    state: bytes
    ends_at_text: str | None
    labels: bytes
    annotations: bytes
    wanted: bool


def delivery(alert: WebhookAlert, wanted: bool) -> Delivery:
    ended = alert.ends_at
    ends_at_text = None if ended is None else alert_time(ended)[1]
    labels, annotations = labels_json(alert.labels), labels_json(alert.annotations)
    return Delivery(
        alert,
        (alert.fingerprint, alert_time(alert.startsAt)[1]),
        alert_state(alert.status, ends_at_text, labels, annotations),
        ends_at_text,
        labels,
        annotations,
        wanted,
    )


def notification_row(notification: WebhookNotification, body: bytes, received: str) -> tuple[Any, ...]:
    return (
        received,
        notification.receiver,
        notification.status,
        notification.groupKey,
        notification.externalURL,
        len(notification.alerts),
        body.decode("utf-8"),
    )


def insert_event(
    conn: sqlite3.Connection,
    notification_id: int,
    occurrence_id: int,
    status: str,
    previous_status: str | None,
    pending: bool,
    received: str,
) -> int:
    """One delivery's alert event; stored as dispatched at receipt unless a rule has it to decide."""
    event_id = conn.execute(
        _INSERT_ALERT_EVENT, (notification_id, occurrence_id, status, previous_status, None if pending else received)
    ).lastrowid
    assert event_id is not None
    return event_id


def pending_event(
    event_id: int,
    notification_id: int,
    notification: WebhookNotification,
    status: str,
    previous_status: str | None,
    occurrence: Occurrence,
) -> AlertEvent:
    """An event handed to the dispatcher, with what it needs of its notification."""
    return AlertEvent(
        id=event_id,
        notification_id=notification_id,
        status=status,
        previous_status=previous_status,
        occurrence=occurrence,
        common_labels=notification.commonLabels,
        external_url=notification.externalURL,
    )


def add_deliveries(
    resends: Sequence[Resend], wanted: Callable[[Resend], bool], conn: sqlite3.Connection
) -> tuple[AlertEvent, ...]:
    """Each occurrence's deliveries acknowledged from memory: its count and last-seen time, one
    alert event (to dispatch when a rule wants it), and the latest notification that delivered it."""
    cursor = conn.cursor()
    cursor.row_factory = sqlite3.Row
    notification_ids: dict[int, int] = {}  # by id() of the notification: a notification is stored once
    events = []
    for resend in resends:
        received = timestamp(resend.last_received_at)
        row = cursor.execute(_ADD_DELIVERIES, (resend.deliveries, received, resend.occurrence_id)).fetchone()
        if row is None:
            continue  # gone: nothing to count (retention keeps an occurrence with deliveries waiting)
        notification = resend.notification
        notification_id = notification_ids.get(id(notification))
        if notification_id is None:
            notification_id = conn.execute(
                INSERT_NOTIFICATION, notification_row(notification, resend.body, received)
            ).lastrowid
            assert notification_id is not None
            notification_ids[id(notification)] = notification_id
        status = row["occurrence_status"]
        # a stale firing of an occurrence resolved meanwhile: nothing to decide, as in the UPSERT
        alert = resend.alert
        rule_wants = wanted(resend)
        if rule_wants:  # a reload since may want what no rule wanted when it was first stored
            conn.execute("UPDATE occurrences SET matched = 1 WHERE id = ? AND matched = 0", (resend.occurrence_id,))
        pending = not (alert.status == "firing" and status == "resolved") and rule_wants
        event_id = insert_event(conn, notification_id, resend.occurrence_id, alert.status, status, pending, received)
        if pending:
            events.append(
                pending_event(event_id, notification_id, notification, alert.status, status, occurrence_row(row))
            )
    return tuple(events)
