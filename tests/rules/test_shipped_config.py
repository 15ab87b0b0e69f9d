"""The shipped rules and playbooks (rules/*.yaml, playbooks/*.yaml): they load, cover every alert of
alertmanager/router-alerts.yml, pass their rule unit tests (rules/tests/*.yaml), and `remediator
check` says so."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from support.shipped import EXPECTED_ALERTS

from service.rules.coverage import coverage, load_alerting_rules
from service.rules.loading import check_config
from service.rules.ruleset import RuleSet
from service.rules.ruletest import run_rule_tests
from service.settings import load_settings

ROOT = Path(__file__).resolve().parent.parent.parent
ALERT_RULES = "alertmanager/router-alerts.yml"
CLI_TIMEOUT_S = 60

# One playbook per runbook procedure (the description and `runbook:` say which).
RUNBOOK_PLAYBOOKS = {
    "nats-process-down": "§1A",
    "router-nats-flapping": "§1B",
    "jetstream-backlog": "§1C",
    "jetstream-purge": "§1C",
    "circuit-breaker-open": "§2",
    "circuit-breaker-force-recovery": "§2B",
    "clean-state-restart": "§3",
    "diagnose-high-latency": "§4",
    "diagnose-rate-limiting": "§4",
    "diagnose-503-errors": "§4",
    "diagnose-stuck-queue": "§4",
    "notify-only": "§3",
}


@pytest.fixture(scope="module")
def ruleset() -> RuleSet:
    settings = load_settings(ROOT / "remediator.yaml")
    loaded, errors = check_config(settings.rules, settings.playbooks, ROOT)
    assert errors == [], "\n".join(str(e) for e in errors)
    assert loaded is not None
    return loaded


def test_remediator_yaml_globs_pick_up_every_shipped_file_and_no_rule_test(ruleset: RuleSet) -> None:
    shipped = {p.name for p in (ROOT / "rules").glob("*.yaml")}
    assert shipped, "no shipped rules"
    assert {Path(r.file).name for r in ruleset.rules} == shipped
    # rule unit tests live below rules/tests/, which the non-recursive rules glob never reads
    assert all("/tests/" not in r.file for r in ruleset.rules)
    assert set(ruleset.playbooks) == set(RUNBOOK_PLAYBOOKS)


def test_every_playbook_names_its_runbook_section(ruleset: RuleSet) -> None:
    for name, section in RUNBOOK_PLAYBOOKS.items():
        playbook = ruleset.playbooks[name].playbook
        assert playbook.runbook.startswith("T-OPS-04 " + section), (name, playbook.runbook)
        assert len(playbook.description) > 80, name


def test_the_runbook_slip_is_fixed_and_noted(ruleset: RuleSet) -> None:
    playbook = ruleset.playbooks["clean-state-restart"].playbook
    argv0 = [str(getattr(s, "argv", [""])[0]) for s in playbook.steps]
    assert [a.rsplit("/", 1)[-1] for a in argv0 if a.endswith(".sh")] == [
        "router_stop.sh",
        "nats_stop.sh",
        "nats_start.sh",
        "setup_nats_streams.sh",
        "router_start.sh",
    ]
    assert "slip" in playbook.description and "router_start.sh" in playbook.description


def test_destructive_steps_sit_behind_approvals(ruleset: RuleSet) -> None:
    # purge and force_recovery: an approval comes first (the loader enforces it for purge_stream)
    for name, action in (("jetstream-purge", "purge"), ("circuit-breaker-force-recovery", "force_recovery")):
        names = [s.name for s in ruleset.playbooks[name].playbook.steps]
        types = [s.type for s in ruleset.playbooks[name].playbook.steps]
        assert types.index("approval") < names.index(action), name
    wipe = next(s for s in ruleset.playbooks["clean-state-restart"].playbook.steps if s.name == "wipe_data")
    assert wipe.when == "params.wipe_data and steps.approve_wipe.ok"
    # and the rules that would run them ship disabled
    disabled = {r.name for r in ruleset.rules if not r.rule.enabled}
    assert disabled == {"jetstream-backlog-purge", "circuit-breaker-force-recovery", "router-down-clean-state-restart"}


def test_restarting_rules_run_one_at_a_time(ruleset: RuleSet) -> None:
    for rule in ruleset.rules:
        assert rule.rule.limits.concurrency == "single", rule.name
        assert rule.rule.limits.cooldown >= 300, rule.name


def test_every_alert_is_covered(ruleset: RuleSet) -> None:
    alerts, errors = load_alerting_rules([ALERT_RULES], ROOT)
    assert errors == []
    assert {a.alert for a in alerts} >= EXPECTED_ALERTS
    report = coverage(ruleset, alerts)
    assert report.uncovered == ()
    assert report.unused == ()
    assert report.unchecked == ()
    assert report.ok


def test_rule_unit_tests_pass(ruleset: RuleSet) -> None:
    files = sorted((ROOT / "rules" / "tests").glob("*.yaml"))
    assert len(files) >= 3
    ok, output = run_rule_tests(files, ruleset)
    assert ok, output
    assert "failed" not in output.splitlines()[-1], output


def test_every_enabled_rule_has_a_unit_test() -> None:
    text = "\n".join(p.read_text() for p in (ROOT / "rules" / "tests").glob("*.yaml"))
    settings = load_settings(ROOT / "remediator.yaml")
    loaded, _ = check_config(settings.rules, settings.playbooks, ROOT)
    assert loaded is not None
    for rule in loaded.rules:
        if rule.rule.enabled:
            assert f"rule: {rule.name}" in text or f"{{rule: {rule.name}," in text, rule.name


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        check=False,
    )


def test_remediator_check_with_alert_rules_exits_0() -> None:
    result = _cli("check", "--config", "remediator.yaml", "--alert-rules", ALERT_RULES)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "not covered" not in result.stdout + result.stderr
    assert "matches no alert" not in result.stdout + result.stderr


def test_remediator_test_passes_on_the_rule_tests() -> None:
    files = [str(p.relative_to(ROOT)) for p in sorted((ROOT / "rules" / "tests").glob("*.yaml"))]
    result = _cli("test", "--config", "remediator.yaml", *files)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "all passed" in result.stdout, result.stdout
