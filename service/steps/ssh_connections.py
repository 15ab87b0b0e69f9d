"""SSH connections to inventory hosts, for the ``ssh`` step: one per host, reused, kept alive, with a
limit of concurrent commands per host and strict host-key checking against one known_hosts file.

A connection that cannot be made fails with a :class:`SshUnavailable` whose ``kind`` says why, each
a different thing for the person paged: the host key is not in known_hosts, the host key *changed*
(possibly someone in the middle: never accepted), the login was refused, the host is unreachable.
After such a failure the host is not tried again for ``failure_backoff`` (doubling each time, up to
ten times it): the steps that want it meanwhile fail at once with the same reason, so retries and
parallel runs never make a storm of connection attempts.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import asyncssh

from service.errors import StepError
from service.inventory import Host
from service.steps.errors import reason

log = logging.getLogger("remediator.ssh")

FailureKind = Literal[
    "host_key_unknown", "host_key_changed", "auth_refused", "unreachable", "key_unusable", "ssh_error"
]
_CLOSE_TIMEOUT_S = 5.0
_MAX_BACKOFF_FACTOR = 10


class SshUnavailable(StepError):
    """No connection to a host; ``kind`` is the reason as a word, the message says it for a person."""

    def __init__(self, kind: FailureKind, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class SshOptions:
    known_hosts: Path | None
    connect_timeout: float = 10.0
    keepalive_interval: float = 15.0
    keepalive_count_max: int = 3
    max_sessions_per_host: int = 4
    failure_backoff: float = 30.0


@dataclass
class _Failure:
    error: SshUnavailable
    until: float
    backoff: float


class SshConnections:
    """The connection pool the executor gives every ssh step; :meth:`close` at shutdown."""

    def __init__(self, options: SshOptions, monotonic: Callable[[], float] = time.monotonic) -> None:
        # asyncssh logs every command at INFO, the env values in it included (a step's secrets):
        # its warnings only; what ran is in the step records, redacted.
        logging.getLogger("asyncssh").setLevel(logging.WARNING)
        self._options = options
        self._monotonic = monotonic
        self._connections: dict[Host, asyncssh.SSHClientConnection] = {}
        self._locks: dict[Host, asyncio.Lock] = {}
        self._slots: dict[Host, asyncio.Semaphore] = {}
        self._failures: dict[Host, _Failure] = {}
        self.attempts = 0  # connection attempts made, for tests and metrics

    @asynccontextmanager
    async def session(self, host: Host) -> AsyncIterator[asyncssh.SSHClientConnection]:
        """A connection to ``host`` while holding one of its command slots."""
        slot = self._slots.setdefault(host, asyncio.Semaphore(self._options.max_sessions_per_host))
        async with slot:
            yield await self.connect(host)

    def forget(self, host: Host, connection: asyncssh.SSHClientConnection) -> None:
        """A connection that turned out dead (the host rebooted): the next session makes a new one."""
        if self._connections.get(host) is connection:
            del self._connections[host]
        connection.close()

    async def close(self) -> None:
        connections = list(self._connections.values())
        self._connections.clear()
        for connection in connections:
            connection.close()
        for connection in connections:
            try:
                await asyncio.wait_for(connection.wait_closed(), _CLOSE_TIMEOUT_S)
            except (TimeoutError, OSError, asyncssh.Error):
                pass  # closing anyway; nothing more to do for a connection that will not say goodbye

    async def connect(self, host: Host) -> asyncssh.SSHClientConnection:
        """The pooled connection to ``host``, made now if there is none (or it closed); raises
        :class:`SshUnavailable`, at once while the host is in its failure backoff."""
        async with self._locks.setdefault(host, asyncio.Lock()):  # one connection attempt per host at a time
            existing = self._connections.get(host)
            if existing is not None and not existing.is_closed():
                return existing
            now = self._monotonic()
            failure = self._failures.get(host)
            if failure is not None and now < failure.until:
                raise SshUnavailable(
                    failure.error.kind,
                    f"{failure.error} (not tried again for another {failure.until - now:.0f}s)",
                )
            try:
                connection = await self._connect(host)
            except SshUnavailable as exc:
                backoff = self._options.failure_backoff
                if failure is not None:
                    backoff = min(failure.backoff * 2, backoff * _MAX_BACKOFF_FACTOR)
                self._failures[host] = _Failure(exc, self._monotonic() + backoff, backoff)
                log.warning("ssh connection failed", extra={"host": host.name, "kind": exc.kind, "reason": str(exc)})
                raise
            self._failures.pop(host, None)
            self._connections[host] = connection
            return connection

    async def _connect(self, host: Host) -> asyncssh.SSHClientConnection:
        options = self._options
        if options.known_hosts is None:  # settings refuse an inventory without one; a bug otherwise
            raise SshUnavailable("host_key_unknown", f"{host}: no known_hosts file is configured (ssh.known_hosts)")
        keys = _client_keys(host)
        self.attempts += 1
        try:
            return await asyncssh.connect(
                host.address,
                host.port,
                username=host.user,
                client_keys=keys,
                known_hosts=str(options.known_hosts),
                connect_timeout=options.connect_timeout,
                keepalive_interval=options.keepalive_interval,
                keepalive_count_max=options.keepalive_count_max,
                config=None,  # not ~/.ssh/config: the inventory alone says where and how
                agent_path=None,
                preferred_auth="publickey",
                password_auth=False,
                kbdint_auth=False,
                gss_auth=False,
                host_based_auth=False,
            )
        except asyncssh.HostKeyNotVerifiable as exc:
            if _known(options.known_hosts, host):
                raise SshUnavailable(
                    "host_key_changed",
                    f"{host}: host key CHANGED: it does not match {options.known_hosts} (refused: the host may "
                    f"have been reinstalled, or someone is in the middle; check, then update known_hosts)",
                ) from exc
            raise SshUnavailable(
                "host_key_unknown", f"{host}: host key unknown: {options.known_hosts} has no key for it"
            ) from exc
        except asyncssh.PermissionDenied as exc:
            raise SshUnavailable(
                "auth_refused", f"{host}: login refused for user {host.user} with key {host.key_file}: {exc.reason}"
            ) from exc
        except asyncssh.DisconnectError as exc:
            raise SshUnavailable("ssh_error", f"{host}: ssh: {exc.reason}") from exc
        except (OSError, TimeoutError, asyncssh.ConnectionLost) as exc:
            why = f"no answer within {options.connect_timeout:g}s" if isinstance(exc, TimeoutError) else reason(exc)
            raise SshUnavailable("unreachable", f"{host}: unreachable: {why}") from exc


def _client_keys(host: Host) -> list[asyncssh.SSHKey] | tuple[()]:
    """The host's key (none given: the default keys of the service's user, as ssh would)."""
    if host.key_file is None:
        return ()
    try:
        passphrase = None
        if host.passphrase_file is not None:
            passphrase = host.passphrase_file.read_text().rstrip("\r\n")
        return [asyncssh.read_private_key(host.key_file, passphrase)]
    except (OSError, asyncssh.KeyImportError, ValueError) as exc:
        raise SshUnavailable("key_unusable", f"{host}: cannot use key {host.key_file}: {reason(exc)}") from exc


def _known(known_hosts: Path, host: Host) -> bool:
    """Whether known_hosts holds any key for the host (then a mismatch is a changed key, not a new host)."""
    try:
        trusted = asyncssh.read_known_hosts(str(known_hosts)).match(host.address, host.address, host.port)
    except (OSError, ValueError):
        return False
    return bool(trusted[0] or trusted[1])
