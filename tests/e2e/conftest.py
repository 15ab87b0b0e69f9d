"""The whole stack for end-to-end scenarios: real nats-server, router, Prometheus, Alertmanager and
remediator (demo/stack.py's `Stack`), one per test, stopped by PID when the test ends, pass or fail.

A missing binary FAILS the test (never skips) with the packages to install. The log of every
process of a failing test's stacks is attached to its report; the timings a scenario measured are
printed in the terminal summary.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from demo.processes import StackError, log_tail
from demo.stack import MissingBinaries, Stack, StackOptions

_TIMINGS_KEY = pytest.StashKey[list[tuple[str, list[str]]]]()


class Stacks:
    """`stacks(options)` starts one whole stack under the test's tmp dir; all are stopped at the end."""

    def __init__(self, tmp_path: Path) -> None:
        self._tmp_path = tmp_path
        self.started: list[Stack] = []

    def __call__(self, options: StackOptions | None = None) -> Stack:
        try:
            stack = Stack(self._tmp_path / f"stack{len(self.started)}", options=options)
        except MissingBinaries as exc:
            pytest.fail(str(exc), pytrace=False)
        self.started.append(stack)  # before start(): a failed start-up still gets its logs attached
        try:
            stack.start()
        except (StackError, RuntimeError, TimeoutError) as exc:
            pytest.fail(f"the stack did not start: {exc}", pytrace=False)
        return stack

    def stop_all(self) -> None:
        errors: list[BaseException] = []
        for stack in reversed(self.started):
            try:
                stack.stop()
            except BaseException as exc:  # keep stopping the others
                errors.append(exc)
        if errors:
            raise errors[0]


@pytest.fixture
def stacks(tmp_path: Path) -> Iterator[Stacks]:
    procs = Stacks(tmp_path)
    try:
        yield procs
    finally:
        procs.stop_all()


@pytest.fixture
def record_timings(request: pytest.FixtureRequest) -> Any:
    """`record_timings(lines)`: print them now and again in the terminal summary."""

    def record(lines: list[str]) -> None:
        print("\n".join(lines))
        request.config.stash.setdefault(_TIMINGS_KEY, []).append((request.node.nodeid, lines))

    return record


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed:
        for value in getattr(item, "funcargs", {}).values():
            if isinstance(value, Stacks):
                for stack in value.started:
                    for name, path in stack.logs():
                        report.sections.append((f"{name} log ({path})", log_tail(path)))
    return report


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    recorded = config.stash.get(_TIMINGS_KEY, [])
    if recorded:
        terminalreporter.section("end-to-end timings")
        for nodeid, lines in recorded:
            terminalreporter.write_line(nodeid)
            for line in lines:
                terminalreporter.write_line(f"  {line}")
