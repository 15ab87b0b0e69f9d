"""The one text form of a time the service writes (the store, the reports, the list filters) and its
reading back.

Written times are UTC with microseconds, so equal instants are equal text and sort as text (SQL
compares them as strings). Times from outside (webhook bodies, query strings) are validated where they
arrive: pydantic for bodies, ``service.web.listing`` for the list filters.
"""

from __future__ import annotations

from datetime import UTC, datetime


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
