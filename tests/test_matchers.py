"""Matcher semantics against Alertmanager's own parse/match cases (pkg/labels/*_test.go)."""

from __future__ import annotations

import pytest

from service.matchers import Matcher, MatcherError, parse_matcher, parse_matcher_list, parse_matchers

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
    ("job=", [("job", "=", "")]),
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
    ('x=~"("', 'invalid regex "(": missing ), unterminated subpattern'),
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
    ("pattern", "fragment"),
    [
        ("(a)\\1", "backreference \\1"),
        ("(?=a)a", "lookahead"),
        ("(?!a)b", "negative lookahead"),
        ("(?<=a)b", "lookbehind"),
        ("(?<!a)b", "negative lookbehind"),
        ("(?P<x>a)(?P=x)", "named backreference"),
        ("(a)?(?(1)b|c)", "conditional group"),
        ("(?>a)", "atomic group"),
        ("a++", "possessive quantifier"),
        ("a{2}+", "possessive quantifier"),
        ("a{1001}", "repeat count"),
        ("(?x) a", "inline flag (?x)"),
        ("[[:alpha:]]", "POSIX class"),
        ("a\\Z", "\\Z"),
    ],
)
def test_python_only_regex_constructs_are_refused(pattern: str, fragment: str) -> None:
    with pytest.raises(MatcherError) as info:
        Matcher("x", "=~", pattern)
    assert f'invalid regex "{pattern}": {fragment}' in str(info.value)


@pytest.mark.parametrize("pattern", ["[]a]", "(?i:abc)", "(?P<n>a)", "a{2,5}", "[\\]]", "a}+", "\\\\1"])
def test_re2_compatible_regexes_are_accepted(pattern: str) -> None:
    Matcher("x", "=~", pattern)


def test_unbalanced_group_that_alertmanager_would_splice_is_refused() -> None:
    with pytest.raises(MatcherError, match="unbalanced parenthesis"):
        Matcher("x", "=~", "a)|(b")


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
