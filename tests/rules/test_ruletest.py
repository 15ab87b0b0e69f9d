from __future__ import annotations

from pathlib import Path

import pytest

from service.rules.loading import load_ruleset
from service.rules.ruleset import RuleSet
from service.rules.ruletest import run_rule_tests

ROOT = Path(__file__).resolve().parent.parent.parent
CASES = ROOT / "tests" / "fixtures" / "ruletests"


@pytest.fixture(scope="module")
def ruleset() -> RuleSet:
    return load_ruleset(["tests/fixtures/rules/*.yaml"], ["tests/fixtures/playbooks/*.yaml"], ROOT)


def test_good_file_passes(ruleset: RuleSet) -> None:
    passed, report = run_rule_tests([CASES / "good.yaml"], ruleset)
    assert passed, report
    assert report.endswith("5 tests, all passed\n")
    assert "  ok    hostile tenant label is refused before anything runs\n" in report


def test_wrong_expectation_fails_with_a_diff(ruleset: RuleSet) -> None:
    passed, report = run_rule_tests([CASES / "wrong.yaml"], ruleset)
    assert not passed
    assert report == (
        f"{CASES / 'wrong.yaml'}\n"
        f"  FAIL  NatsDown passes the default scripts dir ({CASES / 'wrong.yaml'}:2)\n"
        "        --- expected\n"
        "        +++ got\n"
        "        @@ -1,4 +1,4 @@\n"
        "         - rule: nats-down\n"
        "           params:\n"
        "             instance: n1:8222\n"
        "        -    scripts_dir: /opt/beamline/scripts\n"
        "        +    scripts_dir: /srv/scripts\n"
        "1 test, 1 failed\n"
    )


def test_unexpected_match_and_expected_no_match(ruleset: RuleSet, tmp_path: Path) -> None:
    path = tmp_path / "t.yaml"
    path.write_text(
        "tests:\n"
        "  - name: expects nothing but nats-down matches\n"
        "    alert: {labels: {alertname: NatsDown, instance: 'n:1'}}\n"
        "    no_match: true\n"
        "  - name: expects a rule that does not match\n"
        "    alert: {labels: {alertname: Nothing}}\n"
        "    expect: [{rule: nats-down}]\n"
    )
    passed, report = run_rule_tests([path], ruleset)
    assert not passed
    assert "-no match\n        +- rule: nats-down\n        +  playbook: nats-restart\n" in report
    assert "        -- rule: nats-down\n        +no match\n" in report
    assert report.endswith("2 tests, 2 failed\n")


def test_invalid_test_file_is_reported(ruleset: RuleSet, tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        "tests:\n  - name: both\n    alert: {labels: {a: b}}\n    no_match: true\n    expect: [{rule: x}]\n"
    )
    passed, report = run_rule_tests([path], ruleset)
    assert not passed
    assert f"  ERROR {path}:2: tests[0]: give either expect (a non-empty list) or no_match: true\n" in report


def test_a_misspelt_field_names_the_one_meant(ruleset: RuleSet, tmp_path: Path) -> None:
    path = tmp_path / "t.yaml"
    path.write_text(
        "tests:\n"
        "  - name: camelCase from the webhook body\n"
        "    alert: {labels: {alertname: NatsDown}, startsAt: '2026-01-01T00:00:00Z'}\n"
        "    expect: [{rule: nats-down, parms: {}}]\n"
    )
    passed, report = run_rule_tests([path], ruleset)
    assert not passed
    assert f"  ERROR {path}:3: tests[0].alert.startsAt: unknown field; did you mean `starts_at`?\n" in report
    assert f"  ERROR {path}:4: tests[0].expect[0].parms: unknown field; did you mean `params`?\n" in report
