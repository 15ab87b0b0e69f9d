"""Automation paused through Alertmanager silences, so on-call can use the tool they already know.

A silence that carries the configured marker matcher (by default `remediation="paused"`) is a
*remediation pause*: real alerts do not carry that label, so it mutes nothing, and its other matchers
say which alerts the remediator must leave alone while it is active. The active ones are polled from
Alertmanager's API; when Alertmanager cannot be reached the last known set stays in force.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from service.alerts.matchers import Matcher, MatcherError, Op, matches_all

log = logging.getLogger("remediator.silences")


@dataclass(frozen=True)
class SilencePause:
    id: str
    created_by: str
    comment: str
    ends_at: str
    matchers: tuple[Matcher, ...]

    def describe(self) -> str:
        return f"Alertmanager silence {self.id} by {self.created_by} until {self.ends_at}: {self.comment}"


def parse_silences(payload: Any, marker: Matcher) -> list[SilencePause]:
    """The active silences of `GET /api/v2/silences` that carry `marker`, with their other matchers."""
    pauses: list[SilencePause] = []
    for silence in payload if isinstance(payload, list) else []:
        if not isinstance(silence, Mapping) or silence.get("status", {}).get("state") != "active":
            continue
        matchers: list[Matcher] = []
        marked = False
        try:
            for m in silence.get("matchers", []):
                regex, equal = bool(m.get("isRegex")), m.get("isEqual", True) is not False
                op: Op = ("=~" if equal else "!~") if regex else ("=" if equal else "!=")
                matcher = Matcher(str(m["name"]), op, str(m["value"]))
                if matcher == marker:
                    marked = True
                else:
                    matchers.append(matcher)
        except (KeyError, TypeError, MatcherError) as exc:
            log.warning("silence ignored: unusable matchers", extra={"silence": silence.get("id"), "error": str(exc)})
            continue
        if marked:
            pauses.append(
                SilencePause(
                    str(silence.get("id", "")),
                    str(silence.get("createdBy", "")),
                    str(silence.get("comment", "")),
                    str(silence.get("endsAt", "")),
                    tuple(matchers),
                )
            )
    return pauses


class SilenceWatcher:
    def __init__(self, alertmanager_url: str, marker: Matcher, interval: float, timeout: float = 5.0) -> None:
        self._url = f"{alertmanager_url}/api/v2/silences"
        self._marker = marker
        self._interval = interval
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self.pauses: list[SilencePause] = []

    def pause_for(self, labels: Mapping[str, str]) -> SilencePause | None:
        return next((p for p in self.pauses if matches_all(p.matchers, labels)), None)

    async def refresh(self, session: aiohttp.ClientSession) -> None:
        marker = self._marker
        query = {"filter": f'{marker.name}{marker.op}"{marker.value}"'}
        async with session.get(self._url, params=query, timeout=self._timeout) as response:
            response.raise_for_status()
            self.pauses = parse_silences(await response.json(), marker)

    async def run(self) -> None:
        async with aiohttp.ClientSession() as session:
            while True:
                try:
                    await self.refresh(session)
                except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                    log.warning("cannot read silences; the last known pauses stay", extra={"error": str(exc)})
                await asyncio.sleep(self._interval)
