"""Matcher semantics against Alertmanager's own parse/match cases (pkg/labels/*_test.go)."""

from __future__ import annotations

import random
import re
import time

import pytest

from service.alerts.matchers import Matcher, MatcherError, parse_matcher, parse_matcher_list, parse_matchers

# (input, expected [(name, op, value)]) — cases from Alertmanager's TestMatchers (classic parser).
PARSE_OK = [
    ('{foo="bar"}', [("foo", "=", "bar")]),
    ('{foo=~"bar.*"}', [("foo", "=~", "bar.*")]),
    ('{foo!="bar"}', [("foo", "!=", "bar")]),
    ('{foo!~"bar.*"}', [("foo", "!~", "bar.*")]),
    ('{foo="bar", baz!="quux"}', [("foo", "=", "bar"), ("baz", "!=", "quux")]),
    ('{foo="bar",baz!~".*quux", derp="wat"}', [("foo", "=", "bar"), ("baz", "!~", ".*quux"), ("derp", "=", "wat")]),
    ('{foo=""}', [("foo", "=", "")]),
    ('{foo="bar,quux", job="job1"}', [("foo", "=", "bar,quux"), ("job", "=", "job1")]),
    ('{foo = "bar", dings != "bums", }', [("foo", "=", "bar"), ("dings", "!=", "bums")]),
    ("foo=bar,dings!=bums", [("foo", "=", "bar"), ("dings", "!=", "bums")]),
    (
        '{quote="She said: \\"Hi, ladies! That\'s gender-neutral…\\""}',
        [("quote", "=", 'She said: "Hi, ladies! That\'s gender-neutral…"')],
    ),
    ('statuscode=~"5.."', [("statuscode", "=~", "5..")]),
    ("tricky=~~~", [("tricky", "=~", "~~")]),
    ('trickier==\\\\=\\=\\"', [("trickier", "=", '=\\=\\="')]),
    (
        'contains_quote != "\\"" , contains_comma !~ "foo,bar" , ',
        [("contains_quote", "!=", '"'), ("contains_comma", "!~", "foo,bar")],
    ),
    ("{foo=bar}}", [("foo", "=", "bar}")]),
    ("{foo=bar}},}", [("foo", "=", "bar}}")]),
    ("{foo=,bar=}}", [("foo", "=", ""), ("bar", "=", "}")]),
    ("{foo=bar\\t}", [("foo", "=", "bar\\t")]),
    ("{foo=bar\\n}", [("foo", "=", "bar\n")]),
    ("{foo=bar\\}", [("foo", "=", "bar\\")]),
    ("{foo=bar\\\\}", [("foo", "=", "bar\\")]),
    ('{foo=bar\\"}', [("foo", "=", 'bar"')]),
    ("job=", [("job", "=", "")]),  # pkg/labels/parse_test.go; refused only in unreleased 05f073f (2022)
    ("{foo=", [("foo", "=", "")]),
    ("{foo=}b", [("foo", "=", "}b")]),
    ('node="nœud-ß-日本"', [("node", "=", "nœud-ß-日本")]),
    ('a="x\\\\y"', [("a", "=", "x\\y")]),
]

PARSE_ERR = [
    ('job="value', 'matcher value contains unescaped double quote: "value'),
    ('job=value"', 'matcher value contains unescaped double quote: value"'),
    ('trickier==\\\\=\\=\\""', 'matcher value contains unescaped double quote: =\\\\=\\=\\""'),
    ('contains_unescaped_quote = foo"bar', 'matcher value contains unescaped double quote: foo"bar'),
    ('{invalid-name = "valid label"}', 'bad matcher format: invalid-name = "valid label"'),
    ('"{foo=\\"bar"}', 'bad matcher format: "{foo=\\"bar"'),
    ('"foo="bar""', 'bad matcher format: "foo="bar""'),
    ("{{foo=", "bad matcher format: {foo="),
    ("a=b,,c=d", "bad matcher format: "),
    ('x=~"("', 'invalid regex "(": RE2: missing ): ('),
]


@pytest.mark.parametrize(("text", "want"), PARSE_OK)
def test_parse_like_alertmanager(text: str, want: list[tuple[str, str, str]]) -> None:
    assert [(m.name, m.op, m.value) for m in parse_matchers(text)] == want


@pytest.mark.parametrize(("text", "message"), PARSE_ERR)
def test_parse_errors_like_alertmanager(text: str, message: str) -> None:
    with pytest.raises(MatcherError) as info:
        parse_matchers(text)
    assert str(info.value) == message


# (matcher, labels, matches?)
MATCH_TABLE = [
    ('alertname="NatsDown"', {"alertname": "NatsDown"}, True),
    ('alertname="NatsDown"', {"alertname": "NatsDownX"}, False),
    ('foo=""', {}, True),  # empty value matches a missing label
    ('foo=""', {"foo": "x"}, False),
    ('foo!=""', {}, False),
    ('foo!=""', {"foo": "x"}, True),
    ('foo!="bar"', {}, True),
    ('foo!~"x"', {}, True),  # negative regex on a missing label
    ('foo!~""', {}, False),
    ('foo=~".*"', {}, True),
    ('foo=~".+"', {}, False),
    ('foo=~"bar"', {"foo": "xbarx"}, False),  # anchored: no substring match
    ('foo=~"bar"', {"foo": "bar\n"}, False),  # anchored at the very end, not before a newline
    ('foo=~"b.r"', {"foo": "bar"}, True),
    ('severity=~"critical|page"', {"severity": "page"}, True),
    ('severity=~"critical|page"', {"severity": "pager"}, False),  # alternation inside the anchors
    ('severity!~"critical|page"', {"severity": "warning"}, True),
    ('quote="say \\"hi\\""', {"quote": 'say "hi"'}, True),
    ('nl="a\\nb"', {"nl": "a\nb"}, True),
    ('node=~"nœud-.*"', {"node": "nœud-1"}, True),
    ('node="日本"', {"node": "日本"}, True),
    ('d=~"\\d+"', {"d": "١٢"}, False),  # RE2's \d is ASCII-only: Arabic-Indic digits do not match
    ('d=~"\\d+"', {"d": "12"}, True),
    ('i=~"(?i)nats"', {"i": "NATS"}, True),
]


@pytest.mark.parametrize(("text", "labels", "want"), MATCH_TABLE)
def test_match_table(text: str, labels: dict[str, str], want: bool) -> None:
    assert parse_matcher(text).matches(labels) is want


@pytest.mark.parametrize(
    ("pattern", "reason"),
    [
        ("(a)\\1", "invalid escape sequence: \\1"),  # backreference
        ("(?=a)a", "invalid perl operator: (?="),  # lookahead
        ("(?<!a)b", "invalid perl operator: (?<!"),  # lookbehind
        ("(?P<x>a)(?P=x)", "invalid perl operator: (?P"),  # named backreference
        ("(?>a)", "invalid perl operator: (?>"),  # atomic group
        ("a++", "bad repetition operator: ++"),  # possessive quantifier
        ("a{1001}", "invalid repetition size: {1001}"),
        ("(?x) a", "invalid perl operator: (?x"),
        ("a\\Z", "invalid escape sequence: \\Z"),
        ("[[:foo:]]", "invalid character class range: [:foo:]"),
        ("[a-", "missing ]: [a-"),
    ],
)
def test_re2_refuses_with_its_own_reason(pattern: str, reason: str) -> None:
    with pytest.raises(MatcherError) as info:
        Matcher("x", "=~", pattern)
    assert str(info.value) == f'invalid regex "{pattern}": RE2: {reason}'


@pytest.mark.parametrize(
    ("pattern", "value", "want"),
    [
        ("[]a]", "]", True),
        ("(?i:abc)", "ABC", True),
        ("(?P<n>a)", "a", True),
        ("a{2,5}", "aaaaa", True),
        ("a{1000}", "a" * 1000, True),
        ("\\\\1", "\\1", True),
        ("[[:alpha:]]+", "abc", True),  # POSIX classes inside brackets, as in Go
        ("[[:alpha:]]+", "a1", False),
        ("\\pL+", "日本", True),  # Unicode classes, as in Go
        ("(?i)straße", "STRAßE", True),  # (?i) folds Unicode, as in Go
        ("(?U)a+", "aaa", True),
        ("(?s)a.b", "a\nb", True),
        ("a.b", "a\nb", False),  # . does not match a newline without (?s)
        ("a\\z", "a", True),
    ],
)
def test_re2_syntax_and_semantics(pattern: str, value: str, want: bool) -> None:
    assert Matcher("x", "=~", pattern).matches({"x": value}) is want


def test_unbalanced_group_that_alertmanager_would_splice_is_refused() -> None:
    with pytest.raises(MatcherError, match="unexpected \\): a\\)\\|\\(b"):
        Matcher("x", "=~", "a)|(b")


def test_lone_surrogates_are_matched_as_the_replacement_character() -> None:
    # json.loads (simulate, explain) lets "\ud800" through; Go's decoder makes it U+FFFD.
    assert Matcher("x", "=~", "a.b").matches({"x": "a\ud800b"})
    assert Matcher("x", "=~", "a\ufffdb").matches({"x": "a\ud800b"})
    with pytest.raises(MatcherError) as info:
        Matcher("x", "=~", "\ud800")
    assert str(info.value) == 'invalid regex "\\ud800": not valid UTF-8'
    with pytest.raises(MatcherError) as info:
        parse_matcher('x="a\ud800"')
    assert str(info.value) == 'matcher value not valid UTF-8: "a\\ud800"'  # Alertmanager's message


def test_long_runs_of_spaces_in_a_matcher_parse_in_linear_time() -> None:
    # A lazy value group followed by optional spaces backtracked quadratically: 3.5 s for 20,000 spaces.
    text = "a=x" + " " * 50_000 + "y  "
    start = time.perf_counter()
    [m] = parse_matchers(text)
    assert time.perf_counter() - start < 0.5
    assert m.value == "x" + " " * 50_000 + "y"


def test_explain_says_why() -> None:
    m = parse_matcher('severity=~"critical|page"')
    assert m.explain({"severity": "warning"}) == 'label severity="warning" does not match =~"critical|page"'
    assert m.explain({"severity": "page"}) == 'label severity="page" matches =~"critical|page"'
    assert m.explain({}) == 'label severity is missing (counts as "") and does not match =~"critical|page"'


def test_str_round_trips_with_escapes() -> None:
    m = Matcher("q", "=", 'a "b"\\c\nd')
    assert str(m) == 'q="a \\"b\\"\\\\c\\nd"'
    assert parse_matcher(str(m)) == m


def test_list_form_and_list_of_strings_combine() -> None:
    ms = parse_matcher_list(['{alertname="A", env!="dev"}', 'severity=~"critical|page"'])
    assert [str(m) for m in ms] == ['alertname="A"', 'env!="dev"', 'severity=~"critical|page"']


@pytest.mark.parametrize(
    ("text", "values"),
    [
        ('a="b"', {"b"}),
        ('a=""', None),  # also satisfied by a missing label: no index can serve it
        ('a=~"b|c d|e-f:g/h"', {"b", "c d", "e-f:g/h"}),
        ('a=~"b.c"', None),
        ('a=~"b|"', None),
        ('a=~"(?i)b"', None),
        ('a!="b"', None),
        ('a!~"b|c"', None),
    ],
)
def test_index_values(text: str, values: set[str] | None) -> None:
    m = parse_matcher(text)
    assert m.index_values == (frozenset(values) if values is not None else None)
    if values:  # the index must agree with the regex
        assert all(m.matches({"a": v}) for v in values)
        assert not m.matches({"a": "zzz"})


def test_cached_regex_results_stay_correct() -> None:
    m = parse_matcher('a=~"x.*"')
    for _ in range(2):
        assert m.matches({"a": "xy"}) and not m.matches({"a": "yx"})
    n = parse_matcher('a!~"x.*"')
    assert not n.matches({"a": "xy"}) and n.matches({"a": "yx"})


@pytest.mark.parametrize(
    "pattern", ["Alert12[0-9]*", "(?i)nats", "critical|page", "nœud-.*", "job-3.*", "[a-c]+x", "", "(a+)+", "\u017f?S"]
)
def test_match_range_shortcut_never_changes_an_answer(pattern: str) -> None:
    """Values are turned away by RE2's possible-match range before RE2 runs; compare with Python's re."""
    rng = random.Random(15)
    alphabet = "AaBbclert12390:-x\u017fSsNnTtœé"  # \u017f folds to s
    values = ["".join(rng.choices(alphabet, k=rng.randrange(12))) for _ in range(3000)]
    values += ["Alert12", "Alert12:", "Alert13", "NATS", "nat\u017f", "page", "paged", "nœud-", "nœud", "job-3"]
    matcher = Matcher("x", "=~", pattern)
    expected = re.compile(pattern)
    wrong = [v for v in values if matcher.matches({"x": v}) is not (expected.fullmatch(v) is not None)]
    assert wrong == []


def test_regex_that_re2_cannot_bound_still_matches() -> None:
    matcher = Matcher("x", "=~", "a\\C*")  # \C is one byte: RE2 has no range for it
    assert matcher.matches({"x": "abc"}) and not matcher.matches({"x": "bc"})
