"""Alertmanager matchers, parsed and evaluated the way Alertmanager does.

The reference is Alertmanager's classic parser (``pkg/labels/parse.go`` and ``matcher.go``), the
syntax of ``matchers:`` in routes and of ``amtool``:

- ``name op value`` where op is ``=``, ``!=``, ``=~`` or ``!~`` and name is a classic label name
  (``[a-zA-Z_:][a-zA-Z0-9_:]*``); whitespace around each token is dropped.
- The value may be double-quoted. Inside it ``\\"``, ``\\\\`` and ``\\n`` are escapes; any other
  backslash is literal; an unescaped ``"`` may only close a quoted value. Unquoted values may be empty
  (``foo=`` is ``foo=""``).
- A list form ``{a="b", c=~"d"}``: one leading ``{`` and one trailing ``}`` are dropped, commas outside
  quotes separate matchers, a trailing comma is allowed.
- A missing label has the value ``""``: ``foo=""`` and ``foo!~"x"`` match an alert without ``foo``.
- Regexes are fully anchored: Alertmanager compiles ``^(?:value)$``.

Differences, all deliberate and reported as errors rather than silently changing meaning:

- Python ``re`` is not Go's RE2. Constructs RE2 lacks (backreferences, lookarounds, conditionals,
  atomic groups, possessive quantifiers, ``(?#...)`` comments, the ``x``/``a``/``L``/``u`` flags,
  ``\\Z``, POSIX ``[[:alpha:]]`` classes which Python would read differently, repeat counts over
  1000) are refused. Classes ``\\d \\w \\s \\b`` are ASCII-only as in RE2 (we compile with
  ``re.ASCII``); one consequence is that ``(?i)`` folds ASCII letters only, where RE2 folds Unicode.
  Go-only syntax (``\\pL``, ``\\z``, ``(?U)``) is refused by Python's compiler with its own message.
- Alertmanager compiles the value spliced into ``^(?:...)$`` so ``a)|(b`` happens to compile there;
  we compile the value on its own first and refuse unbalanced parentheses.
- The newer UTF-8 parser (``matcher/parse``) also accepts quoted label names with any UTF-8 and Go's
  full string escapes; we implement the classic grammar only (which is what Alertmanager falls back
  to, and what every config valid under both parsers means). Values are UTF-8 in both.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

Op = Literal["=", "!=", "=~", "!~"]

# Go's RE2 \s is [\t\n\f\r ]; Python's \s would also take Unicode spaces, so spell it out. '=~' is
# listed before '=' so the '~' is not read as the first character of the value.
_MATCHER_RE = re.compile(
    r"^[\t\n\f\r ]*([a-zA-Z_:][a-zA-Z0-9_:]*)[\t\n\f\r ]*(=~|=|!=|!~)[\t\n\f\r ]*(.*?)[\t\n\f\r ]*\Z",
    re.DOTALL,
)
REGEX_CACHE_ENTRIES = 4096
_OPS: dict[str, Op] = {"=": "=", "!=": "!=", "=~": "=~", "!~": "!~"}
_RE2_MAX_REPEAT = 1000
# (?...) group prefixes Python accepts and RE2 does not.
_UNSUPPORTED_GROUPS = (
    ("?=", "lookahead"),
    ("?!", "negative lookahead"),
    ("?<=", "lookbehind"),
    ("?<!", "negative lookbehind"),
    ("?P=", "named backreference"),
    ("?(", "conditional group"),
    ("?>", "atomic group"),
    ("?#", "comment group"),
)
_RE2_FLAGS = frozenset("ims-")
_INLINE_FLAGS_RE = re.compile(r"\?([A-Za-z-]+)[:)]")
_LEADING_FLAGS_RE = re.compile(r"(?:\(\?[ims]+\))+")
# Alternatives made only of characters that are never regex syntax: matching is set membership.
_LITERAL_ALTERNATION_RE = re.compile(r"[A-Za-z0-9_:/ -]+(?:\|[A-Za-z0-9_:/ -]+)*")
_REPEAT_RE = re.compile(r"\{(\d+)(?:,(\d*))?\}")


class MatcherError(ValueError):
    """A matcher that Alertmanager would refuse (or that we refuse; see the module docstring)."""


@dataclass(frozen=True)
class Matcher:
    """One label matcher. Construct with ``Matcher(name, op, value)``; regexes compile eagerly."""

    name: str
    op: Op
    value: str
    _regex: re.Pattern[str] | None = field(default=None, init=False, repr=False, compare=False)
    # Like Alertmanager's per-matcher cache: label values repeat (alertname, severity), and a dict
    # lookup is several times cheaper than running the regex. Bounded by clearing when full.
    _results: dict[str, bool] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.op in ("=~", "!~"):
            object.__setattr__(self, "_regex", compile_regex(self.value))

    def matches(self, labels: Mapping[str, str]) -> bool:
        """True if ``labels`` satisfy this matcher; a missing label counts as ``""``."""
        value = labels.get(self.name, "")
        op = self.op
        if op == "=":
            return value == self.value
        if op == "!=":
            return value != self.value
        found = self._results.get(value)
        if found is None:
            assert self._regex is not None  # set in __post_init__ for both regex ops
            found = self._regex.fullmatch(value) is not None
            if len(self._results) >= REGEX_CACHE_ENTRIES:
                self._results.clear()
            self._results[value] = found
        return found if op == "=~" else not found

    def explain(self, labels: Mapping[str, str]) -> str:
        """One readable line saying whether and why ``labels`` satisfy this matcher."""
        verdict = "matches" if self.matches(labels) else "does not match"
        if self.name in labels:
            subject = f"label {self.name}={_quote(labels[self.name])}"
        else:
            subject = f'label {self.name} is missing (counts as "") and'
        return f"{subject} {verdict} {self.op}{_quote(self.value)}"

    @property
    def index_values(self) -> frozenset[str] | None:
        """The exact values this matcher accepts when they are a finite set an index can serve:
        ``foo="a"`` and ``foo=~"a|b|c"`` (plain literals only). None otherwise, and for an empty
        value, since ``foo=""`` is also satisfied by an absent label."""
        if self.op == "=":
            return frozenset({self.value}) if self.value else None
        if self.op == "=~" and _LITERAL_ALTERNATION_RE.fullmatch(self.value):
            return frozenset(self.value.split("|"))
        return None

    def __str__(self) -> str:
        return f"{self.name}{self.op}{_quote(self.value)}"


def _quote(value: str) -> str:
    """OpenMetrics escaping, as Alertmanager prints matchers."""
    escaped = value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
    return f'"{escaped}"'


def parse_matcher(text: str) -> Matcher:
    """Parse one matcher (``ParseMatcher``): ``name op value``, value optionally quoted."""
    found = _MATCHER_RE.match(text)
    if found is None:
        raise MatcherError(f"bad matcher format: {text}")
    name, op, raw = found.group(1), found.group(2), found.group(3)
    quoted = raw.startswith('"')
    body = raw[1:] if quoted else raw
    value: list[str] = []
    escaped = False
    expect_trailing_quote = quoted
    last = len(body) - 1
    for i, char in enumerate(body):
        if escaped:
            escaped = False
            if char == "n":
                value.append("\n")
            elif char in ('"', "\\"):
                value.append(char)
            else:  # a spurious escape: the backslash is literal
                value.append("\\" + char)
            continue
        if char == "\\":
            if i < last:
                escaped = True
                continue
            value.append("\\")  # a backslash as the last character is literal
        elif char == '"':
            if not expect_trailing_quote or i < last:
                raise MatcherError(f"matcher value contains unescaped double quote: {raw}")
            expect_trailing_quote = False
        else:
            value.append(char)
    if expect_trailing_quote:
        raise MatcherError(f"matcher value contains unescaped double quote: {raw}")
    return Matcher(name, _OPS[op], "".join(value))


def parse_matchers(text: str) -> list[Matcher]:
    """Parse a comma-separated list, optionally in braces (``ParseMatchers``)."""
    text = text.removeprefix("{").removesuffix("}")
    tokens: list[str] = []
    token: list[str] = []
    inside_quotes = False
    escaped = False
    for char in text:
        if char == "," and not inside_quotes:
            tokens.append("".join(token))
            token = []
            continue
        if char == '"':
            if not escaped:
                inside_quotes = not inside_quotes
            else:
                escaped = False
        elif char == "\\":
            escaped = not escaped
        else:
            escaped = False
        token.append(char)
    tail = "".join(token).strip()
    if tail:
        tokens.append(tail)
    return [parse_matcher(t) for t in tokens]


def parse_matcher_list(items: Iterable[str]) -> list[Matcher]:
    """A rule's ``match:`` list: each item is one matcher or a ``{...}`` list, all must hold
    (like ``matchers:`` in an Alertmanager route)."""
    out: list[Matcher] = []
    for item in items:
        out.extend(parse_matchers(item))
    return out


def matches_all(matchers: Iterable[Matcher], labels: Mapping[str, str]) -> bool:
    return all(m.matches(labels) for m in matchers)


def compile_regex(pattern: str) -> re.Pattern[str]:
    """Compile ``pattern`` fully anchored, refusing what RE2 would not accept or mean the same."""
    _check_re2(pattern)
    # Python wants global flags such as (?i) at the very start, so they cannot stay inside our
    # (?:...) wrapper; hoisting leading ones keeps RE2's meaning. Flags later in the pattern are
    # refused by Python ("global flags not at the start"); (?i:...) works anywhere.
    leading = _LEADING_FLAGS_RE.match(pattern)
    flags, body = (leading.group(0), pattern[leading.end() :]) if leading else ("", pattern)
    try:
        re.compile(pattern, re.ASCII)
        return re.compile(f"{flags}(?:{body})", re.ASCII)
    except re.error as exc:
        raise MatcherError(f'invalid regex "{pattern}": {exc.msg}') from None


def _check_re2(pattern: str) -> None:
    def refuse(what: str, why: str = "Alertmanager's RE2 does not support it") -> MatcherError:
        return MatcherError(f'invalid regex "{pattern}": {what}: {why}')

    i, n = 0, len(pattern)
    in_class = False
    while i < n:
        char = pattern[i]
        if char == "\\":
            nxt = pattern[i + 1 : i + 2]
            if not in_class and nxt in tuple("123456789"):
                raise refuse(f"backreference \\{nxt}")
            if nxt == "Z":
                raise refuse("\\Z")
            i += 2
            continue
        if in_class:
            if char == "]":
                in_class = False
            elif pattern.startswith("[:", i):
                raise refuse("POSIX class [[:...:]]", "Python's re reads it as a plain set; use [a-z] etc.")
            i += 1
            continue
        if char == "[":
            in_class = True
            i += 1
            if pattern.startswith("^", i):
                i += 1
            if pattern.startswith("]", i):  # a ']' first in a class is literal
                i += 1
            continue
        if char == "(" and pattern.startswith("?", i + 1):
            rest = pattern[i + 1 :]
            for prefix, what in _UNSUPPORTED_GROUPS:
                if rest.startswith(prefix):
                    raise refuse(what)
            flags = _INLINE_FLAGS_RE.match(rest)
            if flags and not rest.startswith("?P") and not set(flags.group(1)) <= _RE2_FLAGS:
                raise refuse(f"inline flag (?{flags.group(1)})")
        if char == "{":
            repeat = _REPEAT_RE.match(pattern, i)
            if repeat:
                counts = [int(g) for g in repeat.groups() if g]
                if any(c > _RE2_MAX_REPEAT for c in counts):
                    raise refuse("repeat count", f"RE2 allows at most {_RE2_MAX_REPEAT}")
                i = repeat.end()
                if pattern.startswith("+", i):
                    raise refuse("possessive quantifier")
                continue
        if char in "*+?" and pattern.startswith("+", i + 1) and i > 0:
            raise refuse("possessive quantifier")
        i += 1
