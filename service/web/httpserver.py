"""The HTTP server under the app: what aiohttp's own server lacks, and the loop that runs it.

aiohttp closes idle connections (`keepalive_timeout`) but puts no bound on how long a request may take
to arrive, nor on how many connections are open: a client trickling a byte every few seconds holds a
connection forever, and enough idle sockets exhaust the open-files limit, after which asyncio logs
every failed accept. Here each request must arrive in full within `request_read_timeout` of its first
byte; past `max_connections` the oldest idle connection is closed to make room, or the new one when
none is idle; and repeated connection problems are logged once per interval with a count.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import resource
from collections.abc import Callable
from typing import Any, cast

from aiohttp import web
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler

from service.logs import ThrottledLog
from service.settings import ServerSettings
from service.web.access import QuietRequestHandler

log = logging.getLogger("remediator.http")

# Descriptors left for everything but client connections: the store, step child processes' pipes,
# outgoing HTTP/NATS/SSH connections, log files.
FD_HEADROOM = 256
AUTO_MAX_CONNECTIONS = 1000
SWEEP_SECONDS = 1.0  # how often overdue requests are looked for: they are cut off within this of the timeout
_ACCEPT_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


def open_files_limit() -> int:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return 1 << 20 if soft == resource.RLIM_INFINITY else soft


def auto_max_connections(files_limit: int) -> int:
    """The default cap: well below the open-files limit, so the service's own descriptors never run out."""
    return max(1, min(AUTO_MAX_CONNECTIONS, max(files_limit // 4, files_limit - FD_HEADROOM)))


def accept_backlog(files_limit: int, max_connections: int) -> int:
    """The listen backlog, which is also how many connections asyncio accepts in one go: each holds a
    descriptor until the next loop iteration even when it is refused, so a burst must fit the headroom
    with room to spare for the service's own descriptors (a quarter of what the cap leaves)."""
    return max(8, min(128, (files_limit - max_connections) // 4))


class _Notes:
    """The throttled log lines of one server."""

    def __init__(self, interval: float, loop: asyncio.AbstractEventLoop) -> None:
        def throttled(level: int, message: str) -> ThrottledLog:
            return ThrottledLog(log, level, message, interval, loop)

        self.refused = throttled(logging.WARNING, "connection refused: too many open connections, none idle")
        self.evicted = throttled(logging.INFO, "idle connection closed to make room for a new one")
        self.too_slow = throttled(logging.WARNING, "connection closed: its request did not arrive in time")
        self.accept_failed = throttled(logging.ERROR, "cannot accept connections: out of system resources")

    def close(self) -> None:
        for note in (self.refused, self.evicted, self.too_slow, self.accept_failed):
            note.close()


class _GuardedRequestHandler(QuietRequestHandler):  # answers bad requests without quoting them
    """aiohttp's connection protocol, noting when the request being read began, refusing when told to."""

    def __init__(self, manager: GuardedServer, *, refuse: bool, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._guard = manager
        self._refused = refuse
        self.request_started: float | None = None  # loop time of the first byte of the request being read
        self._body: StreamReader | None = None  # the body still arriving, once its headers have

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Refused, or evicted between its accept and now (a burst of accepts): aiohttp would leave the
        # transport of a handler force-closed before it was connected open for ever.
        if self._refused or self._force_close:
            self._refused = True
            cast(asyncio.Transport, transport).abort()
            return
        super().connection_made(transport)

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._refused:
            return
        self._guard.forget(self)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if data and self.request_started is None:
            self.request_started = self._loop.time()
        queued = len(self._messages)
        super().data_received(data)
        # Parsing is synchronous: a message added just now is the request whose bytes these were.
        if len(self._messages) > queued:
            self._body = self._messages[-1][1]
        if self._body is not None and self._body.is_eof():
            self._body = None
            self.request_started = None

    @property
    def idle(self) -> bool:
        """No request being read or answered: the connection can be closed like on a keep-alive timeout."""
        return self.request_started is None and not self._messages and not self._request_in_progress

    def log_exception(self, *args: Any, **kw: Any) -> None:
        # A client that went away mid-request, or that was cut off for being too slow, is not an error
        # here; aiohttp would log a traceback for each, which anyone could turn into a flood.
        if isinstance(kw.get("exc_info"), ConnectionError):
            self.log_debug(*args, **kw)
        else:
            super().log_exception(*args, **kw)


class GuardedServer(web.Server):
    """aiohttp's server with a cap on open connections and a deadline for reading each request."""

    def __init__(
        self, app_server: web.Server, settings: ServerSettings, max_connections: int, notes: _Notes, **kwargs: Any
    ) -> None:
        loop = asyncio.get_running_loop()
        super().__init__(
            app_server.request_handler,
            request_factory=app_server.request_factory,
            handler_cancellation=app_server.handler_cancellation,
            loop=loop,
            **kwargs,
        )
        self._event_loop = loop
        self._handler_kwargs = kwargs
        self._read_timeout = settings.request_read_timeout
        self.max_connections = max_connections
        self.notes = notes
        self._open: dict[_GuardedRequestHandler, None] = {}  # oldest first
        self._sweeper = loop.call_later(SWEEP_SECONDS, self._sweep)

    def __call__(self) -> RequestHandler:
        refuse = len(self._open) >= self.max_connections and not self._evict_idle()
        handler = _GuardedRequestHandler(self, refuse=refuse, loop=self._event_loop, **self._handler_kwargs)
        if refuse:
            self.notes.refused.note(max_connections=self.max_connections)
        else:
            self._open[handler] = None
        return handler

    def forget(self, handler: _GuardedRequestHandler) -> None:
        self._open.pop(handler, None)

    def _evict_idle(self) -> bool:
        for handler in self._open:
            if handler.idle:
                del self._open[handler]
                handler.force_close()
                self.notes.evicted.note(max_connections=self.max_connections)
                return True
        return False

    def _sweep(self) -> None:
        deadline = self._event_loop.time() - self._read_timeout
        for handler in list(self._open):
            started = handler.request_started
            if started is not None and started < deadline:
                self.forget(handler)
                handler.force_close()
                self.notes.too_slow.note(request_read_timeout=self._read_timeout)
        self._sweeper = self._event_loop.call_later(SWEEP_SECONDS, self._sweep)

    async def shutdown(self, timeout: float | None = None) -> None:  # noqa: ASYNC109 (aiohttp's signature)
        self._sweeper.cancel()
        await super().shutdown(timeout)


class _GuardedAppRunner(web.AppRunner):
    def __init__(
        self,
        app: web.Application,
        server: Callable[[web.Server], GuardedServer],
        *,
        shutdown_timeout: float,
        handler_kwargs: dict[str, Any],
    ) -> None:
        super().__init__(app, handle_signals=True, shutdown_timeout=shutdown_timeout, **handler_kwargs)
        self._guarded_server = server

    async def _make_server(self) -> web.Server:
        app_server = await super()._make_server()  # runs the app's start-up (its cleanup contexts)
        return self._guarded_server(app_server)


def _exception_handler(notes: _Notes) -> Callable[[asyncio.AbstractEventLoop, dict[str, Any]], None]:
    """Accept failures (EMFILE when descriptors run out) are counted, not logged one by one: asyncio
    retries the accept and reports every failure; everything else goes to asyncio's default handler."""

    def handle(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if "socket" in context and isinstance(exc, OSError) and exc.errno in _ACCEPT_ERRNOS:
            notes.accept_failed.note(error=exc.strerror)
        else:
            loop.default_exception_handler(context)

    return handle


async def _run(app: web.Application, host: str, port: int, settings: ServerSettings, shutdown_timeout: float) -> None:
    loop = asyncio.get_running_loop()
    files_limit = open_files_limit()
    max_connections = settings.max_connections or auto_max_connections(files_limit)
    if max_connections > max(files_limit // 2, files_limit - FD_HEADROOM):
        log.warning(
            "server.max_connections leaves too few of the open-files limit for the store, steps and outgoing "
            "connections: raise the limit (ulimit -n) or lower max_connections",
            extra={"max_connections": max_connections, "open_files_limit": files_limit},
        )
    notes = _Notes(settings.log_interval, loop)
    loop.set_exception_handler(_exception_handler(notes))
    handler_kwargs: dict[str, Any] = {"keepalive_timeout": settings.keepalive_timeout, "access_log": None}

    def guarded(app_server: web.Server) -> GuardedServer:
        return GuardedServer(app_server, settings, max_connections, notes, **handler_kwargs)

    runner = _GuardedAppRunner(app, guarded, shutdown_timeout=shutdown_timeout, handler_kwargs=handler_kwargs)
    try:
        await runner.setup()
        await web.TCPSite(runner, host, port, backlog=accept_backlog(files_limit, max_connections)).start()
        log.info(
            "accepting connections",
            extra={
                "listen": f"{host}:{port}",
                "max_connections": max_connections,
                "open_files_limit": files_limit,
                "keepalive_timeout": settings.keepalive_timeout,
                "request_read_timeout": settings.request_read_timeout,
            },
        )
        await asyncio.Event().wait()  # until SIGTERM/SIGINT (GracefulExit) or cancellation
    finally:
        # Also after a failed start-up: the cleanup contexts that did start are closed in order
        # (store last), instead of being left to the loop's shutdown, which cannot close them cleanly.
        await runner.cleanup()
        notes.close()


def run(app: web.Application, host: str, port: int, settings: ServerSettings, shutdown_timeout: float) -> None:
    """Serve ``app`` until SIGTERM or SIGINT, then drain: stop accepting, let requests in flight finish
    (up to ``shutdown_timeout``), run every cleanup context. An error in start-up propagates once the
    parts that had started are closed. (web.run_app's loop handling, with the guarded server.)"""
    loop = asyncio.new_event_loop()
    main = loop.create_task(_run(app, host, port, settings, shutdown_timeout))
    try:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(main)
    except (web.GracefulExit, KeyboardInterrupt):
        pass
    finally:
        try:
            if not main.done():
                # Only the main task first: its cleanup drains requests in flight, which must not be cancelled.
                main.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    loop.run_until_complete(main)
        finally:
            rest = asyncio.all_tasks(loop)
            for task in rest:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*rest, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            asyncio.set_event_loop(None)
            loop.close()
