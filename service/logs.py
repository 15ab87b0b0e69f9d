"""Structured logs: one JSON object per line, with bound context fields."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Protocol

# Attributes every LogRecord has; anything else on a record came from `extra=` and is logged as a field.
_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None)).keys()) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def configure(level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's access log duplicates our own request metrics; keep warnings only.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


class BoundLogger(logging.LoggerAdapter[logging.Logger]):
    """A logger that adds fixed fields (execution_id, rule, playbook, fingerprint) to every line."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        extra = dict(self.extra or {})
        extra.update(kwargs.get("extra") or {})
        kwargs["extra"] = extra
        return msg, kwargs


def bind(logger: logging.Logger, fields: Mapping[str, object]) -> BoundLogger:
    return BoundLogger(logger, dict(fields))


class _Timer(Protocol):
    def cancel(self) -> None: ...


class _Scheduler(Protocol):
    """What ThrottledLog needs of the event loop (a fake in tests)."""

    def call_later(self, delay: float, callback: Callable[[], object]) -> _Timer: ...


class ThrottledLog:
    """A message that can repeat thousands of times a second (accept errors, refused connections):
    the first occurrence is logged at once, later ones are counted and logged as one line per
    ``interval`` with ``count``, so a flood costs a few lines, not one per occurrence."""

    def __init__(self, logger: logging.Logger, level: int, message: str, interval: float, loop: _Scheduler) -> None:
        self._logger = logger
        self._level = level
        self._message = message
        self._interval = interval
        self._loop = loop
        self._count = 0
        self._fields: Mapping[str, object] = {}
        self._timer: _Timer | None = None

    def note(self, **fields: object) -> None:
        """One occurrence; ``fields`` (those of the latest occurrence) go on the line that reports it."""
        self._count += 1
        self._fields = fields
        if self._timer is None:
            self._emit()

    def close(self) -> None:
        """Log what is still counted (at shutdown) and stop the timer."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._count:
            self._log()

    def _log(self) -> None:
        extra = {**self._fields, "count": self._count, "interval_seconds": self._interval}
        self._logger.log(self._level, self._message, extra=extra)
        self._count = 0

    def _emit(self) -> None:
        self._log()
        self._timer = self._loop.call_later(self._interval, self._end_interval)

    def _end_interval(self) -> None:
        self._timer = None
        if self._count:
            self._emit()
