from __future__ import annotations

import time
import tracemalloc
from pathlib import Path

import pytest
from pydantic import BaseModel, ConfigDict, ValidationError

from service.yamlload import (
    MAX_ALIAS_EXPANSION,
    ConfigError,
    ConfigErrors,
    Duration,
    did_you_mean,
    format_path,
    load_yaml,
    load_yaml_file,
    parse_duration,
    validation_errors,
)

SOURCE = """\
rules:
  - name: a
    match:
      - alertname="A"
      - severity="x"
  - name: b
    match: ['x="y"']
    extra: 1
"""


class _Rule(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    match: list[str]
    limit: int = 0


class _File(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rules: list[_Rule]


def test_lines_of_keys_and_items() -> None:
    doc = load_yaml(SOURCE, "r.yaml")
    assert doc.lines[("rules",)] == 1
    assert doc.lines[("rules", 0)] == 2
    assert doc.lines[("rules", 0, "match", 1)] == 5
    assert doc.lines[("rules", 1, "match", 0)] == 7
    assert doc.line_of(("rules", 1, "nothing", "deeper")) == 6


def test_validation_errors_point_at_lines() -> None:
    doc = load_yaml(SOURCE.replace("name: a", "name: [a]"), "r.yaml")
    with pytest.raises(ValidationError) as info:
        _File.model_validate(doc.data)
    errors = [str(e) for e in validation_errors(info.value, doc)]
    assert errors == [
        "r.yaml:2: rules[0].name: Input should be a valid string",
        "r.yaml:8: rules[1].extra: unknown field",
    ]


def test_missing_field_reported_at_its_mapping() -> None:
    doc = load_yaml("rules:\n  - match: []\n", "r.yaml")
    with pytest.raises(ValidationError) as info:
        _File.model_validate(doc.data)
    assert [str(e) for e in validation_errors(info.value, doc)] == [
        "r.yaml:2: rules[0].name: required field is missing"
    ]


def test_validation_of_a_sub_document_uses_prefix() -> None:
    doc = load_yaml(SOURCE, "r.yaml")
    with pytest.raises(ValidationError) as info:
        _Rule.model_validate(doc.data["rules"][1])
    assert [str(e) for e in validation_errors(info.value, doc, ("rules", 1))] == [
        "r.yaml:8: rules[1].extra: unknown field"
    ]


def test_duplicate_keys_are_errors() -> None:
    with pytest.raises(ConfigErrors) as info:
        load_yaml("a: 1\nb:\n  c: 1\n  c: 2\n", "d.yaml")
    assert [str(e) for e in info.value.errors] == ['d.yaml:4: b.c: duplicate key "c" (first at line 3)']


def test_syntax_error_has_line() -> None:
    with pytest.raises(ConfigErrors) as info:
        load_yaml("a: 1\nb: [1, 2\nc: 3\n", "s.yaml")
    (error,) = info.value.errors
    assert error.file == "s.yaml" and error.line == 3 and error.message.startswith("invalid YAML:")


def test_unsafe_tags_are_refused() -> None:
    with pytest.raises(ConfigErrors, match="invalid YAML"):
        load_yaml("a: !!python/object/apply:os.system ['true']\n", "u.yaml")


def test_empty_document_and_unreadable_file(tmp_path: Path) -> None:
    assert load_yaml("", "e.yaml").data is None
    with pytest.raises(ConfigErrors, match="cannot read"):
        load_yaml_file(tmp_path / "missing.yaml", "missing.yaml")


def test_aliases_and_merge_keys_load() -> None:
    doc = load_yaml("base: &b {x: 1}\nother:\n  <<: *b\n  y: 2\n", "m.yaml")
    assert doc.data["other"] == {"x": 1, "y": 2}


def test_a_reused_block_keeps_the_lines_of_its_first_use_and_reports_a_duplicate_once() -> None:
    source = "steps:\n  - env: &e\n      A: 1\n      A: 2\n  - env: *e\n"
    with pytest.raises(ConfigErrors) as caught:
        load_yaml(source, "p.yaml")
    assert [str(e) for e in caught.value.errors] == ['p.yaml:4: steps[0].env.A: duplicate key "A" (first at line 3)']
    doc = load_yaml("steps:\n  - env: &e\n      A: 1\n  - env: *e\n", "p.yaml")
    assert doc.data["steps"][1]["env"] == {"A": 1}
    assert (doc.line_of(("steps", 0, "env", "A")), doc.line_of(("steps", 1, "env", "A"))) == (3, 4)


def billion_laughs(depth: int) -> str:
    """Nine aliases of the level below on each level: 9**depth values from a few hundred bytes."""
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for level in range(1, depth + 1):
        lines.append(f"l{level}: &l{level} [" + ",".join([f"*{'a' if level == 1 else f'l{level - 1}'}"] * 9) + "]")
    return "\n".join(lines) + "\n"


def test_an_alias_bomb_is_refused_at_once_naming_the_alias_that_went_over() -> None:
    source = billion_laughs(6)  # 531,441 strings once expanded; 27 s and 2.2 GB before aliases were bounded
    assert len(source) < 400
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(ConfigErrors) as caught:
            load_yaml(source, "bomb.yaml")
        elapsed = time.perf_counter() - started
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert [str(e) for e in caught.value.errors] == [
        f"bomb.yaml:5: l4[0]: YAML aliases expand the document by more than {MAX_ALIAS_EXPANSION} values"
    ]
    assert elapsed < 0.2
    assert peak < 2 * 1024 * 1024


def test_aliases_within_the_bound_expand() -> None:
    doc = load_yaml(billion_laughs(3), "ok.yaml")  # 9**4 strings: within the bound
    assert len(doc.data["l3"]) == 9 and doc.data["l3"][8][8][8][8] == "lol"


def test_nesting_too_deep_is_an_error_not_a_crash() -> None:
    with pytest.raises(ConfigErrors, match=r"^deep\.yaml: invalid YAML: nested too deeply$"):
        load_yaml("[" * 5000 + "]" * 5000, "deep.yaml")


def test_config_error_str() -> None:
    assert str(ConfigError("rules/nats.yaml", 14, "rules[2].match[1]", 'invalid regex "(": missing )')) == (
        'rules/nats.yaml:14: rules[2].match[1]: invalid regex "(": missing )'
    )
    assert str(ConfigError("x.yaml", None, "", "no files")) == "x.yaml: no files"
    assert format_path(("rules", 2, "match", 1)) == "rules[2].match[1]"


@pytest.mark.parametrize(
    ("raw", "seconds"), [(30, 30.0), ("90s", 90.0), ("5m", 300.0), ("1h30m", 5400.0), ("2d", 172800.0), ("500ms", 0.5)]
)
def test_durations(raw: object, seconds: float) -> None:
    assert parse_duration(raw) == seconds


@pytest.mark.parametrize("raw", ["5x", "", "m", True, None])
def test_bad_durations(raw: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(raw)


def test_duration_field() -> None:
    class M(BaseModel):
        d: Duration

    assert M.model_validate({"d": "2m"}).d == 120.0


@pytest.mark.parametrize(
    ("name", "known", "hint"),
    [
        ("startsAt", ["starts_at", "status"], "; did you mean `starts_at`?"),
        ("exce", ["exec", "http"], "; did you mean `exec`?"),
        ("Timeout", ["timeout"], "; did you mean `timeout`?"),
        ("zzz", ["exec", "http"], ""),
    ],
)
def test_did_you_mean_names_the_closest_known_name(name: str, known: list[str], hint: str) -> None:
    assert did_you_mean(name, known) == hint
