"""Short, readable reasons for I/O errors, for step summaries a paged engineer reads."""

from __future__ import annotations

import os
import socket

import aiohttp


def reason(exc: BaseException) -> str:
    """``Connection refused`` rather than ``Connect call failed ('127.0.0.1', 4222)``."""
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect to {exc.host}:{exc.port}: {reason(exc.os_error)}"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve host: {exc.strerror}"
    if isinstance(exc, OSError) and exc.errno is not None and exc.errno > 0:
        return os.strerror(exc.errno)
    return str(exc) or type(exc).__name__
