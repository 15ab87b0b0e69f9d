"""Bounded output capture shared by the step runners."""

from __future__ import annotations

import aiohttp


class TailBuffer:
    """Keeps only the last ``limit`` bytes fed to it, so a chatty source cannot fill memory.

    ``text()`` renders like :func:`service.steps.tail`, marking how many bytes were cut.
    """

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._kept = bytearray()
        self.total = 0  # every byte ever fed, kept or not

    def feed(self, data: bytes) -> None:
        self.total += len(data)
        self._kept += data
        excess = len(self._kept) - self._limit
        if excess > 0:
            del self._kept[:excess]

    def text(self) -> str:
        body = self._kept.decode("utf-8", "replace")
        dropped = self.total - len(self._kept)
        return f"[... {dropped} bytes cut ...]\n{body}" if dropped else body


# Bodies up to this size are kept whole for JSON parsing; past it only the tail survives.
MAX_BODY_BYTES = 4 * 1024 * 1024
_CHUNK = 64 * 1024


async def read_body(resp: aiohttp.ClientResponse, tail: TailBuffer) -> bytes | None:
    """Stream the response into ``tail``; the whole body, or None when it exceeds MAX_BODY_BYTES."""
    whole = bytearray()
    too_big = False
    async for chunk in resp.content.iter_chunked(_CHUNK):
        tail.feed(chunk)
        if not too_big:
            whole += chunk
            if len(whole) > MAX_BODY_BYTES:
                too_big = True
                whole.clear()
    return None if too_big else bytes(whole)
