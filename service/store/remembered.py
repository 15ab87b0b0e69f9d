"""Occurrences known committed, remembered so that a pure re-send is acknowledged without a commit.

Alertmanager re-sends every firing alert of a group on each group change and each repeat_interval:
the same occurrence, byte for byte. Such a re-send brings nothing to commit but one more delivery
(receive_count, last_received_at), so when the store remembers the occurrence in exactly that state
it answers at once and writes the deliveries in a later batch (`IntakeSQL.write_resends`).

The memory is a cache of the store, never ahead of it: an occurrence goes in only once a commit of
it is durable (with the state that commit stored), a delivery that may change it takes it out before
its commit starts, and retention takes out what it deletes. It starts empty: after a restart the
first re-send of each occurrence is committed as any delivery and remembered from then on. Both the
occurrences and the deliveries waiting to be written are bounded in entries; past the bound the
least recently delivered occurrence is forgotten, and a delivery that finds the waiting list full is
committed at once.

It also remembers the bodies of recent re-sends: a re-send is most often the whole notification
again, byte for byte (the same group with the same alerts). A body acknowledged from memory, or
committed as a change to occurrences stored before, maps to the notification as it was validated
then and the occurrence state each alert brought, so its next copies are recognised by a digest of
their bytes, without validating or digesting each alert again. A body that brought an occurrence
first is not kept (a storm of new alerts would only churn them), and a body is only a shortcut to
the occurrences: each must still be remembered in that state, or the body is validated as any other.
"""

from __future__ import annotations

import hashlib
import struct
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple

from pydantic_core import to_json

from service.alerts.webhook import WebhookAlert, WebhookNotification

# An occurrence as the store keys it: (fingerprint, starts_at as stored).
OccurrenceKey = tuple[str, str]

# About 300 bytes each (key, ids and digest): 50,000 firing alerts in some 15 MB.
DEFAULT_LIMIT = 50_000
# Bodies hold their parsed alerts (1-2 KB each): at most this many alerts in all, or `limit` if lower.
BODY_ALERTS_LIMIT = 5_000

_IDS = struct.Struct("<qq")  # occurrence id, event id


def alert_state(status: str, ends_at: str | None, labels_json: bytes, annotations_json: bytes) -> bytes:
    """What a re-send must repeat exactly to change nothing: status, endsAt, labels and annotations
    (the key holds fingerprint and startsAt). A 128-bit digest, so the memory stays small whatever
    the annotations; JSON never holds a raw NUL, so the separators cannot be forged."""
    parts = (status.encode(), (ends_at or "").encode(), labels_json, annotations_json)
    return hashlib.blake2b(b"\0".join(parts), digest_size=16).digest()


def body_digest(body: bytes) -> bytes:
    return hashlib.blake2b(body, digest_size=16).digest()


def labels_json(labels: dict[str, str]) -> bytes:
    """Labels or annotations as stored: pydantic's encoder (a fifth of json.dumps's time), keys in
    the order received (sorted, from Alertmanager: Go marshals maps sorted)."""
    return to_json(labels)


class Known(NamedTuple):
    occurrence_id: int
    event_id: int  # the alert event whose commit stored `state`: a later commit replaces it, never an earlier one
    state: bytes


class SeenBody(NamedTuple):
    """A body acknowledged or committed before: the notification as validated then, and per alert
    the occurrence and the state it brought."""

    notification: WebhookNotification
    deliveries: tuple[tuple[OccurrenceKey, bytes], ...]


@dataclass(slots=True)
class Resend:
    """The deliveries of one occurrence acknowledged from memory and not written yet."""

    occurrence_id: int
    deliveries: int
    last_received_at: datetime  # formatted when written: not on the request's path
    alert: WebhookAlert  # the latest: whether a rule wants it is asked when written
    notification: WebhookNotification  # the latest, stored with the deliveries (the event's notification)
    body: bytes


class RememberedOccurrences:
    def __init__(self, limit: int = DEFAULT_LIMIT) -> None:
        """`limit` bounds both the occurrences remembered and the occurrences with deliveries waiting;
        0 remembers nothing (every delivery is committed before its answer)."""
        self.limit = limit
        # Packed as bytes (ids, then state): no object per entry for the garbage collector to walk
        # at every full collection, and half the size of a tuple.
        self._known: OrderedDict[OccurrenceKey, bytes] = OrderedDict()
        self._waiting: dict[int, Resend] = {}
        self._bodies: OrderedDict[bytes, SeenBody] = OrderedDict()  # by body_digest
        self._body_alerts = 0
        self._body_alerts_limit = min(limit, BODY_ALERTS_LIMIT)

    def __len__(self) -> int:
        return len(self._known)

    @property
    def waiting(self) -> int:
        """Occurrences with deliveries acknowledged from memory and not written yet."""
        return len(self._waiting)

    def get(self, key: OccurrenceKey) -> Known | None:
        """What the store holds of this occurrence, as its last durable commit left it (or None)."""
        packed = self._known.get(key)
        if packed is None:
            return None
        occurrence_id, event_id = _IDS.unpack_from(packed)
        return Known(occurrence_id, event_id, packed[_IDS.size :])

    def remember(self, key: OccurrenceKey, known: Known) -> None:
        """After `known`'s commit is durable."""
        if self.limit <= 0:
            return
        current = self._known.get(key)
        if current is not None:
            if _IDS.unpack_from(current)[1] > known.event_id:
                return  # a later commit already stored a newer state
            self._known.move_to_end(key)
        self._known[key] = _IDS.pack(known.occurrence_id, known.event_id) + known.state
        if len(self._known) > self.limit:
            self._known.popitem(last=False)

    def forget(self, keys: Iterable[OccurrenceKey]) -> list[Known]:
        """Before a commit that may change these occurrences, and once retention deleted them;
        returns what was remembered of them."""
        forgotten = []
        for key in keys:
            known = self.get(key)
            if known is not None:
                del self._known[key]
                forgotten.append(known)
        return forgotten

    def seen_body(self, digest: bytes) -> SeenBody | None:
        """The body of this digest as last seen, if every occurrence it brought is still remembered
        in the state it brought (else it is forgotten: None)."""
        seen = self._bodies.get(digest)
        if seen is None:
            return None
        for key, state in seen.deliveries:
            packed = self._known.get(key)
            if packed is None or packed[_IDS.size :] != state:
                self._forget_body(digest)
                return None
        self._bodies.move_to_end(digest)
        return seen

    def remember_body(self, digest: bytes, seen: SeenBody) -> None:
        """A body whose every occurrence is remembered in the state it brought."""
        alerts = len(seen.deliveries)
        if alerts > self._body_alerts_limit:
            return
        self._forget_body(digest)
        self._bodies[digest] = seen
        self._body_alerts += alerts
        while self._body_alerts > self._body_alerts_limit:
            self._forget_body(next(iter(self._bodies)))

    def _forget_body(self, digest: bytes) -> None:
        seen = self._bodies.pop(digest, None)
        if seen is not None:
            self._body_alerts -= len(seen.deliveries)

    def has_room(self, occurrences: int) -> bool:
        """Whether deliveries of this many more occurrences can wait without passing the bound."""
        return len(self._waiting) + occurrences <= self.limit

    def delivered(
        self,
        key: OccurrenceKey,
        known: Known,
        received_at: datetime,
        alert: WebhookAlert,
        notification: WebhookNotification,
        body: bytes,
    ) -> None:
        """One more delivery of a remembered occurrence, acknowledged from memory, to write later; it
        becomes the most recently delivered."""
        self._known.move_to_end(key)
        resend = self._waiting.get(known.occurrence_id)
        if resend is None:
            self._waiting[known.occurrence_id] = Resend(known.occurrence_id, 1, received_at, alert, notification, body)
            return
        resend.deliveries += 1
        resend.last_received_at, resend.alert, resend.notification, resend.body = received_at, alert, notification, body

    def waiting_ids(self) -> list[int]:
        return list(self._waiting)

    def take_waiting(self, occurrence_ids: Iterable[int] | None = None) -> list[Resend]:
        """The deliveries to write now (of these occurrences, or all); they are no longer waiting."""
        if occurrence_ids is None:
            taken, self._waiting = list(self._waiting.values()), {}
            return taken
        return [resend for i in occurrence_ids if (resend := self._waiting.pop(i, None)) is not None]

    def put_back(self, resends: Iterable[Resend]) -> None:
        """Deliveries whose write failed wait for the next one, merged with those that came since."""
        for resend in resends:
            newer = self._waiting.get(resend.occurrence_id)
            if newer is None:
                self._waiting[resend.occurrence_id] = resend
            else:
                newer.deliveries += resend.deliveries
