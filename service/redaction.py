"""Secrets never reach a report: known secret values and configured patterns are masked before
anything a step printed or received is stored."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

MASK = "[REDACTED]"
MIN_SECRET_LENGTH = 4  # masking "a" or "ab" would shred every output and protect nothing

# Credentials that commonly appear in command output and HTTP bodies. A pattern with a group keeps
# the group (the key) and masks the rest of the match (the value).
DEFAULT_PATTERNS: tuple[str, ...] = (
    r"(?i)(authorization:\s*(?:bearer|basic)\s+)\S+",
    r"(?i)((?:password|passwd|secret|token|api[_-]?key)\s*[=:]\s*)[^\s,;&\"']+",
    r"(?i)(://[^/\s:@]+:)[^@\s/]+(?=@)",  # user:password@ in URLs
)


class Redactor:
    def __init__(self, secrets: Iterable[str], patterns: Iterable[str] = DEFAULT_PATTERNS) -> None:
        # longest first, so a secret that contains another is masked whole
        self._secrets = sorted({s for s in secrets if len(s) >= MIN_SECRET_LENGTH}, key=len, reverse=True)
        self._patterns = [re.compile(p) for p in patterns]

    def text(self, value: str) -> str:
        for secret in self._secrets:
            value = value.replace(secret, MASK)
        for pattern in self._patterns:
            value = pattern.sub(lambda m: (m.group(1) if m.groups() else "") + MASK, value)
        return value

    def data(self, value: Any) -> Any:
        """Every string inside JSON-like data, keys included."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, Mapping):
            return {self.text(str(k)): self.data(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.data(v) for v in value]
        return value
