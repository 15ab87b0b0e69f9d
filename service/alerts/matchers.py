"""Alertmanager matchers, parsed and evaluated the way Alertmanager does.

The reference is Alertmanager's classic parser (``pkg/labels/parse.go`` and ``matcher.go``), the
syntax of ``matchers:`` in routes and of ``amtool``:

- ``name op value`` where op is ``=``, ``!=``, ``=~`` or ``!~`` and name is a classic label name
  (``[a-zA-Z_:][a-zA-Z0-9_:]*``); whitespace around each token is dropped.
- The value may be double-quoted. Inside it ``\\"``, ``\\\\`` and ``\\n`` are escapes; any other
  backslash is literal; an unescaped ``"`` may only close a quoted value. Unquoted values may be empty
  (``foo=`` is ``foo=""``, as in every released Alertmanager's classic parser and its own tests;
  only the UTF-8 parser's strict mode refuses it).
- A list form ``{a="b", c=~"d"}``: one leading ``{`` and one trailing ``}`` are dropped, commas outside
  quotes separate matchers, a trailing comma is allowed.
- A missing label has the value ``""``: ``foo=""`` and ``foo!~"x"`` match an alert without ``foo``.
- Regexes are RE2, Alertmanager's engine (Go's ``regexp`` is RE2), through the ``google-re2``
  bindings, compiled fully anchored as ``^(?:value)$`` with RE2's defaults, which are Go's: UTF-8,
  Perl classes ``\\d \\w \\s \\b`` ASCII-only, ``.`` not matching a newline, ``$`` only at the very
  end. Matching takes time linear in the label's length whatever the regex, and RE2 itself refuses
  what it cannot do in linear time (backreferences, lookarounds, ...), with its own reason.

Differences, all deliberate:

- Alertmanager splices the value into ``^(?:...)$``, so ``a)|(b`` compiles there (and matches any
  value starting with ``a`` or ending with ``b``); we compile the value on its own first and refuse
  unbalanced parentheses.
- C++ RE2 accepts a few things Go's RE2 refuses (``\\C``, one byte); nobody writes them in a label
  matcher.
- The newer UTF-8 parser (``matcher/parse``) also accepts quoted label names with any UTF-8 and Go's
  full string escapes; we implement the classic grammar only (which is what Alertmanager falls back
  to, and what every config valid under both parsers means). Values are UTF-8 in both.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import re2

from service.errors import ConfigurationError

Op = Literal["=", "!=", "=~", "!~"]

# Go's RE2 \s is [\t\n\f\r ]; Python's \s would also take Unicode spaces, so spell it out. '=~' is
# listed before '=' so the '~' is not read as the first character of the value. The value is the rest
# of the text, stripped (Alertmanager's lazy ``(.*?)\s*$`` means the same, and here costs no
# backtracking over long runs of spaces).
_MATCHER_HEAD_RE = re.compile(r"[\t\n\f\r ]*([a-zA-Z_:][a-zA-Z0-9_:]*)[\t\n\f\r ]*(=~|=|!=|!~)")
_SPACE = "\t\n\f\r "
_OPS: dict[str, Op] = {"=": "=", "!=": "!=", "=~": "=~", "!~": "!~"}
# Alternatives made only of characters that are never regex syntax: matching is set membership.
_LITERAL_ALTERNATION_RE = re.compile(r"[A-Za-z0-9_:/ -]+(?:\|[A-Za-z0-9_:/ -]+)*")
# Per-matcher result cache: at most this many values, each at most this long, so a matcher keeps
# under a megabyte (0.83 MB measured when full) however large or varied the labels sent to it are.
# Longer values are rare (label values are names) and RE2 decides them in linear time anyway.
REGEX_CACHE_ENTRIES = 4096
REGEX_CACHE_MAX_VALUE_CHARS = 128
_MATCH_RANGE_BYTES = 64  # how precise the bounds of AnchoredRegex are; longer would rarely reject more


def _re2_options() -> Any:
    options = re2.Options()  # RE2's defaults are Go's (UTF-8, Perl syntax, leftmost-first, one line)
    options.log_errors = False  # refusals are raised with RE2's reason, not printed on stderr
    options.never_capture = True  # we only ask whether it matches: no submatch work
    return options


_RE2_OPTIONS = _re2_options()


class MatcherError(ConfigurationError, ValueError):
    """A matcher that Alertmanager would refuse (or that we refuse; see the module docstring)."""


@dataclass(frozen=True)
class Matcher:
    """One label matcher. Construct with ``Matcher(name, op, value)``; regexes compile eagerly."""

    name: str
    op: Op
    value: str
    _regex: AnchoredRegex | None = field(default=None, init=False, repr=False, compare=False)
    # Like Alertmanager's per-matcher cache: label values repeat (alertname, severity), and a dict
    # lookup is far cheaper than a call into RE2. Bounded in entries and in value length.
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
            found = self._regex.matches(value)
            if len(value) <= REGEX_CACHE_MAX_VALUE_CHARS:
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
    found = _MATCHER_HEAD_RE.match(text)
    if found is None:
        raise MatcherError(f"bad matcher format: {text}")
    name, op, raw = found.group(1), found.group(2), text[found.end() :].strip(_SPACE)
    if not _is_utf8(raw):  # a lone surrogate, e.g. from a YAML "\ud800" escape
        raise MatcherError(f"matcher value not valid UTF-8: {_shown(raw)}")
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


@dataclass(frozen=True)
class AnchoredRegex:
    """A regex compiled by RE2 the way Alertmanager compiles matchers: ``^(?:pattern)$``."""

    pattern: str
    _compiled: Any = field(repr=False, compare=False)
    # Every match lies between these (RE2's PossibleMatchRange): one bytes comparison turns away most
    # values of a regex with a literal prefix (alertname=~"Nats.*") for a tenth of a call into RE2.
    _lowest: bytes = field(default=b"", repr=False, compare=False)
    _highest: bytes = field(default=b"\xff", repr=False, compare=False)  # above every UTF-8 text

    def matches(self, text: str) -> bool:
        """True if the whole of ``text`` matches; time linear in its length."""
        encoded = _utf8(text)
        return self._lowest <= encoded <= self._highest and self._compiled.search(encoded) is not None


@functools.lru_cache(maxsize=1024)  # rules repeat their regexes (severity=~"critical|page"); loads stay fast
def compile_regex(pattern: str) -> AnchoredRegex:
    """Compile ``pattern`` with RE2, fully anchored; MatcherError names the pattern and RE2's reason."""
    try:
        # On its own first: spliced into ^(?:...)$, an unbalanced "a)|(b" would compile to another meaning.
        re2.compile(pattern, _RE2_OPTIONS)
        compiled = re2.compile(f"^(?:{pattern})$", _RE2_OPTIONS)
    except re2.error as exc:
        reason = exc.args[0].decode("utf-8", "replace") if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        raise MatcherError(f'invalid regex "{pattern}": RE2: {reason}') from None
    except UnicodeEncodeError:
        raise MatcherError(f'invalid regex "{_shown(pattern)}": not valid UTF-8') from None
    try:
        lowest, highest = compiled.possiblematchrange(_MATCH_RANGE_BYTES)
    except re2.error:  # RE2 cannot bound this one (e.g. it starts with \C*): no shortcut
        return AnchoredRegex(pattern, compiled)
    return AnchoredRegex(pattern, compiled, lowest, highest)


def _is_utf8(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _shown(text: str) -> str:
    """``text`` printable anywhere: lone surrogates as ``\\udXXX`` escapes."""
    return text.encode("utf-8", "backslashreplace").decode()


def _utf8(text: str) -> bytes:
    try:
        return text.encode()
    except UnicodeEncodeError:
        # A lone surrogate (json.loads lets "\ud800" through): U+FFFD, as Go's JSON decoder makes it.
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace").encode()
