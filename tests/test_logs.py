"""Structured logs: the throttled line that stands for a flood of repeats."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest

from service.logs import ThrottledLog


class FakeTimers:
    """call_later without a loop: the test fires the pending callback when it says time has passed."""

    def __init__(self) -> None:
        self.pending: list[tuple[float, Callable[[], object]]] = []
        self.cancelled = 0

    def call_later(self, delay: float, callback: Callable[[], object]) -> FakeTimers:
        self.pending.append((delay, callback))
        return self

    def cancel(self) -> None:
        self.cancelled += 1
        self.pending.pop()

    def fire(self) -> None:
        _, callback = self.pending.pop(0)
        callback()


def counts(caplog: pytest.LogCaptureFixture) -> list[tuple[int, object]]:
    return [(record.levelno, getattr(record, "count", None)) for record in caplog.records]


def test_a_flood_is_one_line_at_once_then_one_per_interval_with_the_count(caplog: pytest.LogCaptureFixture) -> None:
    timers = FakeTimers()
    throttled = ThrottledLog(logging.getLogger("t"), logging.ERROR, "accept failed", 60.0, timers)
    with caplog.at_level(logging.INFO):
        for _ in range(84_000):
            throttled.note(error="Too many open files")
        assert counts(caplog) == [(logging.ERROR, 1)]  # the first at once
        timers.fire()  # the interval ends: the rest in one line
        assert counts(caplog) == [(logging.ERROR, 1), (logging.ERROR, 83_999)]
        assert caplog.records[-1].error == "Too many open files"  # type: ignore[attr-defined]
        assert caplog.records[-1].interval_seconds == 60.0  # type: ignore[attr-defined]
        timers.fire()  # a quiet interval: nothing logged, and no timer left running
        assert len(caplog.records) == 2 and timers.pending == []
        throttled.note()  # after the quiet: at once again
        assert counts(caplog)[-1] == (logging.ERROR, 1)


def test_close_logs_what_is_still_counted(caplog: pytest.LogCaptureFixture) -> None:
    timers = FakeTimers()
    throttled = ThrottledLog(logging.getLogger("t"), logging.WARNING, "refused", 60.0, timers)
    with caplog.at_level(logging.INFO):
        for _ in range(3):
            throttled.note()
        throttled.close()
    assert counts(caplog) == [(logging.WARNING, 1), (logging.WARNING, 2)]
    assert timers.pending == [] and timers.cancelled == 1
