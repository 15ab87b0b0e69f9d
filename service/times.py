"""Times and durations: the one text form of a time the service writes (the store, the reports, the
list filters) and its reading back, and the one duration type every model accepts.

Written times are UTC with microseconds, so equal instants are equal text and sort as text (SQL
compares them as strings). Times from outside (webhook bodies, query strings) are validated where they
arrive: pydantic for bodies, ``service.web.listing`` for the list filters.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated

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
