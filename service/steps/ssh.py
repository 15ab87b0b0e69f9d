"""``ssh`` step: run one program on an inventory host, with an argv list that no shell re-parses.

sshd hands a command to the login shell as one string, so each argv element (and each ``NAME=value``
of the environment, given to ``env``, since sshd's AcceptEnv is usually closed) is quoted with
:func:`shlex.quote`: whatever an alert's labels put in it arrives as the same literal argv text.
The wrapper prints the shell's pid first: sshd made that shell a session and process group leader,
and the program ``exec``\\ s in its place, so a timeout (or a cancelled run) kills the whole group on
the host, from a second session: SIGTERM, then SIGKILL after a grace period, as ``exec`` does here.

Without an inventory configured, ``fallback: local`` runs the same program here as ``exec`` would
(one playbook for the demo and for a deployment); otherwise the step fails.
"""

from __future__ import annotations

import asyncio
import shlex
import time
from typing import Any, Literal

import asyncssh
from pydantic import Field, field_validator

from service.errors import StepError
from service.inventory import Host, UnknownHosts
from service.steps import StepContext, StepOutcome
from service.steps import exec as exec_step
from service.steps.capture import TailBuffer
from service.steps.exec import ProgramSpec, program_outcome
from service.steps.exec_env import MAX_ARG_STRLEN, SAFE_PATH, Unpassable, check_declared
from service.steps.groups import TERM_GRACE_S
from service.steps.ssh_connections import SshUnavailable

_PGID_MARK = b"remediator-pgid "
_KILL_TIMEOUT_S = TERM_GRACE_S + 5.0  # the kill session itself, on a host that may be struggling
_CLOSE_TIMEOUT_S = 2.0
_CHUNK = 64 * 1024


class Spec(ProgramSpec):
    """Run ``argv`` on ``host`` (an inventory host; default: the one the rule resolved the alert to, or
    the host a ``rolling`` over a group is at). ``env`` and ``REMEDIATOR_EXECUTION_ID`` are set, ``PATH``
    is fixed as for ``exec``; ``inherit_env`` applies to a ``fallback: local`` run only."""

    type: Literal["ssh"]
    host: str | None = Field(default=None, description="an inventory host (template); default: the rule's host")
    fallback: Literal["none", "local"] = Field(
        default="none", description="local: with no inventory configured, run here as exec would (the demo)"
    )

    @field_validator("argv")
    @classmethod
    def _program_not_assignment(cls, argv: list[str]) -> list[str]:
        if "=" in argv[0]:
            raise ValueError("argv[0] must not contain '=' (env would take it for a variable)")
        return argv

    def local(self) -> exec_step.Spec:
        """The same program as an ``exec`` step."""
        fields = self.model_dump(exclude={"type", "host", "fallback"}, exclude_unset=True)
        return exec_step.Spec.model_validate({**fields, "type": "exec"})


def remote_command(argv: list[str], env: dict[str, str], cwd: str | None) -> str:
    """The command line sshd gives the login shell: every word quoted, so it is taken literally."""
    words = ["env", "--", *(f"{name}={value}" for name, value in env.items()), *argv]
    enter = f"cd -- {shlex.quote(cwd)} || exit 126; " if cwd else ""
    return f"exec 2>&1; echo {_PGID_MARK.decode()}$$; {enter}exec {' '.join(shlex.quote(w) for w in words)}"


def kill_command(pgid: int) -> str:
    """SIGTERM the group, wait up to TERM_GRACE_S for it to go, SIGKILL what is left; print the last signal."""
    polls = round(TERM_GRACE_S / 0.05)
    return (
        f"kill -s TERM -- -{pgid} 2>/dev/null || {{ echo SIGTERM; exit 0; }}; i=0; "
        f"while [ $i -lt {polls} ] && kill -0 -- -{pgid} 2>/dev/null; do sleep 0.05; i=$((i+1)); done; "
        f"if kill -s KILL -- -{pgid} 2>/dev/null; then echo SIGKILL; else echo SIGTERM; fi"
    )


def _host(spec: Spec, ctx: StepContext) -> Host:
    assert ctx.inventory is not None
    if spec.host:
        try:
            hosts = ctx.inventory.resolve([spec.host.strip()])
        except UnknownHosts as exc:
            raise StepError(str(exc)) from None
    else:
        hosts = ctx.hosts
    if len(hosts) == 1:
        return hosts[0]
    if not hosts:
        raise StepError("no host to run on: the rule names none (rule hosts:) and the step no host:")
    names = ", ".join(h.name for h in hosts)
    raise StepError(f"{len(hosts)} hosts ({names}): name one with host:, or walk them with a rolling step's group:")


async def run(spec: Spec, ctx: StepContext) -> StepOutcome:
    started = time.monotonic()
    program = spec.argv[0]

    def refused(summary: str, **data: Any) -> StepOutcome:
        return StepOutcome(ok=False, status="error", summary=summary, data=data, duration_s=time.monotonic() - started)

    if ctx.inventory is None:
        if spec.fallback == "local":
            return await exec_step.run(spec.local(), ctx)
        return refused(f"{program} not run: no inventory is configured (settings: inventory), so no host to run on")
    try:
        check_declared(spec.argv, spec.env, spec.cwd)
        host = _host(spec, ctx)
    except (Unpassable, StepError) as exc:
        return refused(f"{program} not run: {exc}")
    env = {"PATH": SAFE_PATH, **spec.env, "REMEDIATOR_EXECUTION_ID": ctx.execution_id}
    command = remote_command(spec.argv, env, spec.cwd)
    if len(command.encode()) >= MAX_ARG_STRLEN:
        return refused(
            f"{program} not run: the command line is {len(command.encode())} bytes, over {MAX_ARG_STRLEN - 1}"
        )
    if ctx.ssh is None:  # a bug: the executor gives every step the pool
        return refused(f"{program} not run: no ssh connections in this context")
    where = f"{program} on {host}"
    try:
        async with ctx.ssh.session(host) as connection:
            try:
                async with asyncio.timeout(spec.timeout):  # a half-dead connection never answers
                    process = await connection.create_process(command, encoding=None, stdin=asyncssh.DEVNULL)
            except (asyncssh.Error, OSError, TimeoutError) as exc:
                ctx.ssh.forget(host, connection)  # the next step connects anew
                return refused(
                    f"{program} not run: {host}: ssh: {_why(exc)}", host=host.describe(), ssh_error="ssh_error"
                )
            try:
                return await _supervise(spec, connection, process, host, where, ctx.output_limit, started)
            except (asyncssh.Error, OSError) as exc:
                ctx.ssh.forget(host, connection)
                return refused(
                    f"{where}: the connection was lost while it ran ({_why(exc)}): its state on the host is unknown",
                    host=host.describe(),
                    ssh_error="connection_lost",
                )
    except SshUnavailable as exc:
        return refused(f"{program} not run: {exc}", host=host.describe(), ssh_error=exc.kind)


def _why(exc: BaseException) -> str:
    return "no answer opening a session" if isinstance(exc, TimeoutError) else str(exc) or type(exc).__name__


async def _supervise(
    spec: Spec,
    connection: asyncssh.SSHClientConnection,
    process: asyncssh.SSHClientProcess[bytes],
    host: Host,
    where: str,
    output_limit: int,
    started: float,
) -> StepOutcome:
    """Collect the output until the program ends; on timeout or cancellation kill its group on the host."""
    buffer = TailBuffer(output_limit)
    pgid: int | None = None
    killed_with: str | None = None
    try:
        try:
            async with asyncio.timeout(spec.timeout):
                first = await process.stdout.readline()
                if first.startswith(_PGID_MARK) and first[len(_PGID_MARK) :].strip().isdigit():
                    pgid = int(first[len(_PGID_MARK) :])
                else:
                    buffer.feed(first)  # a login shell that printed something first; the pid is unknown
                while chunk := await process.stdout.read(_CHUNK):
                    buffer.feed(chunk)
                await process.wait_closed()
        except TimeoutError:
            killed_with = await _kill(connection, pgid, "TERM")
            try:
                await asyncio.wait_for(process.wait_closed(), _CLOSE_TIMEOUT_S)
            except TimeoutError:
                pass  # the channel is closed below; the group is gone or was not found
    except asyncio.CancelledError:  # the run was cancelled: nothing it started may outlive it on the host
        await _kill(connection, pgid, "KILL")
        raise
    finally:
        process.close()
    rc = process.returncode
    data: dict[str, Any] = {"host": host.describe(), "exit_code": rc, "pgid": pgid, "output_bytes": buffer.total}
    return program_outcome(spec, where, rc, killed_with, buffer, data, started)


async def _kill(connection: asyncssh.SSHClientConnection, pgid: int | None, first: Literal["TERM", "KILL"]) -> str:
    """Signal the program's process group on the host; the last signal needed, or why it could not be sent."""
    if pgid is None:
        return "not killed: its process group is unknown"
    command = kill_command(pgid) if first == "TERM" else f"kill -s KILL -- -{pgid} 2>/dev/null; echo SIGKILL"
    try:
        result = await asyncio.wait_for(connection.run(command, stdin=asyncssh.DEVNULL), _KILL_TIMEOUT_S)
    except (TimeoutError, asyncssh.Error, OSError) as exc:
        return f"not confirmed: the kill on the host failed: {exc or type(exc).__name__}"
    said = str(result.stdout or "").strip()
    return said if said in ("SIGTERM", "SIGKILL") else f"not confirmed: {said or result.exit_status}"
