"""The executions list's query string, one parser for the JSON API and the index page.

Filters are checked, not passed through: a time that is not a time, a state that does not exist or a
parameter nobody reads is a 400 naming it, never a silently empty (or silently unfiltered) list.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from multidict import MultiMapping

from service.errors import RequestError
from service.store import ACTIVE_STATES, TERMINAL_STATES
from service.times import timestamp

# "skipped" is what a shadow-mode decision records; the store has no constant naming it on its own.
EXECUTION_STATES = (*ACTIVE_STATES, *sorted(TERMINAL_STATES | {"skipped"}))
TEXT_FILTERS = ("rule", "alertname", "target")
TIME_FILTERS = ("since", "until")
FILTERS = ("state", *TEXT_FILTERS, *TIME_FILTERS)
PAGING = ("limit", "offset")
# SQLite's OFFSET is a signed 64-bit integer; nobody pages a billion rows deep.
MAX_OFFSET = 1_000_000_000
_DIGITS = re.compile(r"[0-9]{1,12}")
# RFC 3339 date-time; the index page's datetime-local form leaves out the seconds and the zone.
_RFC3339 = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?([Zz]|[+-][0-9]{2}:[0-9]{2})"
)
FORM_TIME_PATTERN = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]{1,6})?)?$|^$"
_FORM_TIME = re.compile(FORM_TIME_PATTERN)


class QueryError(RequestError, ValueError):
    """A query parameter that cannot be used; the message names it."""


@dataclass(frozen=True)
class ListQuery:
    limit: int
    offset: int
    filters: dict[str, str]  # what the store filters on (times in the stored text form)


def parse_time(name: str, value: str, *, form: bool = False) -> str:
    """An RFC 3339 time as the store writes it; `form`: the page's zone-less input, meaning UTC."""
    if _RFC3339.fullmatch(value):
        text = value.replace("z", "Z").replace("t", "T")
    elif form and value and _FORM_TIME.fullmatch(value):
        text = value + "+00:00"
    else:
        example = "2026-11-27T19:30" if form else "2026-11-27T19:30:00Z"
        raise QueryError(f"{name}: not a date and time (e.g. {example})")
    try:
        when = datetime.fromisoformat(text).astimezone(UTC)
    except (ValueError, OverflowError):  # 2026-02-30, or out of range once in UTC
        raise QueryError(f"{name}: not a valid date and time: {value!r}") from None
    return timestamp(when)


def _integer(name: str, value: str, low: int, high: int) -> int:
    if not _DIGITS.fullmatch(value) or not low <= int(value) <= high:
        raise QueryError(f"{name}: must be an integer from {low} to {high}")
    return int(value)


def parse_list_query(query: MultiMapping[str], *, max_limit: int, default_limit: int, form: bool = False) -> ListQuery:
    """Validate the list's query. `form`: the index page, whose form sends empty fields for "any"."""
    unknown = sorted(set(query) - {*FILTERS, *PAGING})
    if unknown:
        raise QueryError(f"unknown query parameter(s): {', '.join(unknown)}")
    repeated = sorted(key for key in set(query) if len(query.getall(key)) > 1)
    if repeated:
        raise QueryError(f"query parameter(s) given more than once: {', '.join(repeated)}")
    values = {key: query[key] for key in query}
    if form:  # the form sends every field; an empty one means "any"
        values = {key: value for key, value in values.items() if key in PAGING or value}
    limit = _integer("limit", values["limit"], 1, max_limit) if "limit" in values else default_limit
    offset = _integer("offset", values["offset"], 0, MAX_OFFSET) if "offset" in values else 0
    filters = {key: values[key] for key in TEXT_FILTERS if key in values}
    if "state" in values:
        if values["state"] not in EXECUTION_STATES:
            raise QueryError(f"state: must be one of {', '.join(EXECUTION_STATES)}")
        filters["state"] = values["state"]
    for key in TIME_FILTERS:
        if key in values:
            filters[key] = parse_time(key, values[key], form=form)
    return ListQuery(limit, offset, filters)


def form_values(query: Mapping[str, str], keys: Sequence[str]) -> dict[str, str]:
    """What the index form shows back, as typed."""
    return {key: query.get(key, "") for key in keys}
