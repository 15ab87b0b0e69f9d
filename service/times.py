"""Times and durations: the one text form of a time the service writes (the store, the reports, the
list filters) and its reading back, and the one duration type every model accepts.

Written times are UTC with microseconds, so equal instants are equal text and sort as text (SQL
compares them as strings). Times from outside (webhook bodies, query strings) are validated where they
arrive: pydantic for bodies, ``service.web.listing`` for the list filters.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, time, tzinfo
from typing import Annotated
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BeforeValidator


def timestamp(value: datetime) -> str:
    """One text form for every stored time, so equal instants compare equal as text."""
    return value.astimezone(UTC).isoformat(timespec="microseconds")


def parse_timestamp(value: str | None) -> datetime | None:
    """A time written by :func:`timestamp` (or any ISO 8601 text) back as an aware datetime.

    None or "" is None (an unset column or form field); a text without a zone means UTC.
    """
    if not value:
        return None
    parsed = datetime.fromisoformat(value)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


_DURATION_RE = re.compile(r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?(?:(\d+)ms)?")
_SECONDS_RE = re.compile(r"\d+(?:\.\d+)?")


def parse_duration(value: object) -> float:
    """Seconds from a number, a number as text (an environment override, a query string) or a
    Prometheus-style duration (``90s``, ``5m``, ``1h30m``, ``2d``)."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 30s, 5m or 1h, not a boolean")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        if _SECONDS_RE.fullmatch(text):
            return float(text)
        match = _DURATION_RE.fullmatch(text)
        if match and any(match.groups()):
            d, h, m, s, ms = (int(g) if g else 0 for g in match.groups())
            return d * 86400 + h * 3600 + m * 60 + s + ms / 1000
    raise ValueError(f"invalid duration {value!r}: expected seconds or e.g. 30s, 5m, 1h30m, 2d")


# Every duration a model accepts (settings, rules, playbooks, steps, the API): ``300`` or ``5m``; the
# model holds seconds. Bounds are the field's own (``Field(gt=0, le=3600)``).
Duration = Annotated[float, BeforeValidator(parse_duration)]


# --- time of day and weekday (the `time_in()` template test of playbook conditions) -----------------

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_CLOCK_RE = re.compile(r"([01]?\d|2[0-3]):([0-5]\d)(?::([0-5]\d))?")


@dataclass(frozen=True)
class TimeWindow:
    """A time of day and weekday condition, as Home Assistant's ``time`` condition: from ``after``
    (inclusive) to ``before`` (exclusive), local to ``zone``; ``after`` later than ``before`` spans
    midnight (22:00 to 06:00); either may be left out; ``weekdays`` are those of the local date."""

    after: time | None
    before: time | None
    weekdays: frozenset[int]
    zone: tzinfo

    def contains(self, when: datetime) -> bool:
        local = when.astimezone(self.zone)
        if local.weekday() not in self.weekdays:
            return False
        now = local.time().replace(tzinfo=None)
        if self.after is not None and self.before is not None and self.after > self.before:
            return now >= self.after or now < self.before
        return (self.after is None or now >= self.after) and (self.before is None or now < self.before)


def time_window(
    after: str | None = None, before: str | None = None, weekday: str | Sequence[str] | None = None, tz: str = "UTC"
) -> TimeWindow:
    """The window ``time_in(after="08:00", before="18:00", weekday="mon-fri", tz="Europe/Berlin")``
    describes. ``weekday``: a list (``["sat", "sun"]``), a comma list or a range (``"mon-fri"``).
    Raises ValueError naming what is wrong."""
    try:
        zone = ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {tz!r} (an IANA name such as UTC or Europe/Berlin)") from None
    return TimeWindow(_clock_time(after, "after"), _clock_time(before, "before"), _weekdays(weekday), zone)


def _clock_time(value: str | None, name: str) -> time | None:
    if value is None:
        return None
    match = _CLOCK_RE.fullmatch(str(value).strip())
    if match is None:
        raise ValueError(f"{name}={value!r}: expected a time of day as HH:MM or HH:MM:SS")
    hours, minutes, seconds = (int(part) if part else 0 for part in match.groups())
    return time(hours, minutes, seconds)


def _weekdays(value: str | Sequence[str] | None) -> frozenset[int]:
    if value is None:
        return frozenset(range(7))
    items = [part.strip().lower() for part in value.split(",")] if isinstance(value, str) else [*value]
    days: set[int] = set()
    for item in items:
        first, _, last = str(item).lower().partition("-")
        if first not in WEEKDAYS or (last and last not in WEEKDAYS):
            raise ValueError(f"weekday {item!r}: expected {', '.join(WEEKDAYS)}, or a range such as mon-fri")
        start, end = WEEKDAYS.index(first), WEEKDAYS.index(last or first)
        days.update((start + offset) % 7 for offset in range((end - start) % 7 + 1))
    return frozenset(days)
