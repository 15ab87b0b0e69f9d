"""``exec`` step: run one program with an argv list, never through a shell."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from dataclasses import dataclass
from typing import Any, BinaryIO, Literal, NamedTuple

from pydantic import Field, field_validator

from service.steps import StepContext, StepOutcome, StepSpecBase
from service.steps.capture import TailBuffer
from service.steps.exec_env import (
    MAX_NOTES,
    ChildEnv,
    EnvVars,
    Unpassable,
    build_env,
    check_declared,
    check_inherit_entry,
    inherited_env,
)
from service.steps.groups import end_group, signal_group


class ProgramSpec(StepSpecBase):
    """A program to run, here (``exec``) or on a host (``ssh``): its argv, environment, directory and
    the exit codes that mean success."""

    argv: list[str] = Field(min_length=1, description="program and its arguments, one element each")
    env: EnvVars = Field(default_factory=dict, description="extra environment variables")
    cwd: str | None = None
    expect_exit: list[int] = Field(default_factory=lambda: [0], min_length=1)
    inherit_env: bool | list[str] = Field(
        default_factory=list,
        description="the service's variables passed on: a list adds names or NAME_* prefixes to HOME, USER, "
        "LOGNAME, SHELL, LANG, LANGUAGE, LC_*, TZ and TMPDIR; true passes all, false none (REMEDIATOR_* never)",
    )

    @field_validator("argv")
    @classmethod
    def _program_named(cls, argv: list[str]) -> list[str]:
        if not argv[0]:
            raise ValueError("argv[0] (the program) must not be empty")
        return argv

    @field_validator("inherit_env")
    @classmethod
    def _inherit_entries(cls, inherit: bool | list[str]) -> bool | list[str]:
        if not isinstance(inherit, bool):
            for entry in inherit:
                check_inherit_entry(entry)
        return inherit


class Spec(ProgramSpec):
    """Run ``argv`` as a new process group; succeed when the exit code is in ``expect_exit``.

    ``argv[0]`` is looked up on a fixed safe ``PATH`` (or is a path, relative to ``cwd``). Alert labels
    and annotations reach the program as ``ALERT_LABEL_<NAME>`` / ``ALERT_ANNOTATION_<NAME>`` (left out
    or cut, with a note, when the kernel would refuse them; see :mod:`service.steps.exec_env`) and the
    execution id as ``REMEDIATOR_EXECUTION_ID``.
    """

    type: Literal["exec"]


DRAIN_GRACE_S = 1.0  # after exit, how long a daemon the program started may hold the output pipe open
_REAP_TIMEOUT_S = 5.0  # a SIGKILLed process is gone at once unless stuck in the kernel


class _Collector(asyncio.Protocol):
    """Feeds one of the child's streams into its own tail buffer and into the merged one as it arrives
    (two pipes: writes to both streams at the same instant may land in either order in the merged one)."""

    def __init__(self, merged: TailBuffer, own: TailBuffer, closed: asyncio.Future[None]) -> None:
        self._merged = merged
        self._own = own
        self.closed = closed

    def data_received(self, data: bytes) -> None:
        self._merged.feed(data)
        self._own.feed(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


async def _connect(loop: asyncio.AbstractEventLoop, collector: _Collector, reader: BinaryIO) -> asyncio.ReadTransport:
    transport, _ = await loop.connect_read_pipe(lambda: collector, reader)
    return transport


@dataclass(frozen=True)
class _Capture:
    """The tails kept of a child's output: both streams as they interleaved, and each on its own."""

    merged: TailBuffer
    stdout: TailBuffer
    stderr: TailBuffer

    @classmethod
    def bounded(cls, limit: int) -> _Capture:
        return cls(TailBuffer(limit), TailBuffer(limit), TailBuffer(limit))


async def _kill_group(proc: asyncio.subprocess.Process) -> str:
    """End the program's whole group (service.steps.groups) and reap the leader; the signal needed."""
    last = await end_group(proc.pid) or "SIGTERM"  # start_new_session made the child its group's leader
    try:
        await asyncio.wait_for(proc.wait(), _REAP_TIMEOUT_S)
    except TimeoutError:
        pass  # stuck in uninterruptible sleep; the child watcher reaps it whenever it dies
    return last


class _Ended(NamedTuple):
    rc: int | None
    killed_with: str | None  # set when the timeout struck
    output_open: bool  # something the program started still held the output pipe


async def _supervise(
    proc: asyncio.subprocess.Process, readers: tuple[BinaryIO, BinaryIO], capture: _Capture, time_limit: float
) -> _Ended:
    """Collect stdout and stderr while waiting for the program; kill its group on timeout."""
    loop = asyncio.get_running_loop()
    collectors = [
        _Collector(capture.merged, capture.stdout, loop.create_future()),
        _Collector(capture.merged, capture.stderr, loop.create_future()),
    ]
    transports = []
    try:
        for collector, reader in zip(collectors, readers, strict=True):
            transports.append(await _connect(loop, collector, reader))
        killed_with = None
        try:
            async with asyncio.timeout(time_limit):
                rc: int | None = await proc.wait()
        except TimeoutError:
            killed_with = await _kill_group(proc)
            rc = proc.returncode
        closed = asyncio.gather(*(collector.closed for collector in collectors))
        try:
            await asyncio.wait_for(asyncio.shield(closed), DRAIN_GRACE_S)
        except TimeoutError:
            return _Ended(rc, killed_with, output_open=True)
        return _Ended(rc, killed_with, output_open=False)
    finally:
        for transport in transports:
            transport.close()


async def run(spec: Spec, ctx: StepContext) -> StepOutcome:
    started = time.monotonic()
    program = spec.argv[0]
    try:
        check_declared(spec.argv, spec.env, spec.cwd)
    except Unpassable as exc:
        return StepOutcome(
            ok=False, status="error", summary=f"{program} not started: {exc}", duration_s=time.monotonic() - started
        )
    child = build_env(
        spec.argv, spec.env, inherited_env(spec.inherit_env, os.environ), ctx.labels, ctx.annotations, ctx.execution_id
    )
    noted = child.summary_note()
    capture = _Capture.bounded(ctx.output_limit)
    out_read, out_write = os.pipe()
    err_read, err_write = os.pipe()
    with os.fdopen(out_read, "rb", buffering=0) as out_reader, os.fdopen(err_read, "rb", buffering=0) as err_reader:
        try:
            proc = await asyncio.create_subprocess_exec(
                *spec.argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out_write,
                stderr=err_write,
                cwd=spec.cwd,
                env=child.env,
                start_new_session=True,  # its own process group, so a timeout can kill all it started
            )
        except OSError as exc:  # not found, not executable, bad cwd
            return StepOutcome(
                ok=False,
                status="error",
                summary=f"could not start {program}: {exc}{noted}",
                data=_env_notes(child),
                duration_s=time.monotonic() - started,
            )
        finally:
            # only the child holds the write ends, so EOF comes when it is done
            os.close(out_write)
            os.close(err_write)
        try:
            if ctx.processes is not None:  # so a crash of the service cannot leave the group running
                await ctx.processes.started(proc.pid)
            rc, killed_with, output_open = await _supervise(proc, (out_reader, err_reader), capture, spec.timeout)
        except asyncio.CancelledError:  # the execution was cancelled: nothing it started may outlive it
            signal_group(proc.pid, signal.SIGKILL)
            raise
        if ctx.processes is not None:
            await ctx.processes.ended(proc.pid)
    data: dict[str, Any] = {
        "exit_code": rc,
        "pid": proc.pid,
        "output_bytes": capture.merged.total,
        "stdout": capture.stdout.text(),
        "stderr": capture.stderr.text(),
        **_env_notes(child),
    }
    # A daemon started without redirecting its output keeps our pipe open; say so, as its later
    # writes now fail (redirect a daemon's output to a file).
    held_open = " (a background process still held its output open)" if output_open else ""
    if output_open:
        data["output_held_open"] = True
    return program_outcome(spec, program, rc, killed_with, capture.merged, data, started, f"{held_open}{noted}")


def program_outcome(
    spec: ProgramSpec,
    program: str,
    rc: int | None,
    killed_with: str | None,
    buffer: TailBuffer,
    data: dict[str, Any],
    started: float,
    note: str = "",
) -> StepOutcome:
    """How a program run ended, as a step outcome: timed out (its group killed with ``killed_with``),
    or exited with ``rc`` (negative: the signal that ended it) checked against ``expect_exit``.
    ``program`` names it in the summary (with where it ran, for the ssh step); ``note`` is appended."""
    duration = time.monotonic() - started
    if killed_with is not None:
        data["killed_with"] = killed_with
        return StepOutcome(
            ok=False,
            status="timeout",
            summary=f"{program} still running after {spec.timeout:g}s: process group killed ({killed_with}){note}",
            output=buffer.text(),
            exit_code=rc,
            data=data,
            duration_s=duration,
        )
    ok = rc in spec.expect_exit
    how = f"exited {rc}" if rc is not None and rc >= 0 else f"killed by {_signal_name(rc)}"
    expected = "" if ok else f", expected {' or '.join(str(c) for c in spec.expect_exit)}"
    return StepOutcome(
        ok=ok,
        status="ok" if ok else "failed",
        summary=f"{program} {how}{expected}{note}",
        output=buffer.text(),
        exit_code=rc,
        data=data,
        duration_s=duration,
    )


def _env_notes(child: ChildEnv) -> dict[str, Any]:
    if not child.notes:
        return {}
    return {"env_notes": list(child.notes[:MAX_NOTES]), "env_notes_total": len(child.notes)}


def _signal_name(rc: int | None) -> str:
    try:
        return signal.Signals(-(rc or 0)).name
    except ValueError:
        return f"signal {-(rc or 0)}"
