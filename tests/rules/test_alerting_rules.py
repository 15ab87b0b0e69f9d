"""The Prometheus alerting rules and the Alertmanager/Prometheus configs under alertmanager/.

Runs the real promtool and amtool (Debian packages prometheus and prometheus-alertmanager): a missing
binary fails the test with the package to install, it never skips.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from support.shipped import EXPECTED_ALERTS

ROOT = Path(__file__).resolve().parent.parent.parent
AM_DIR = ROOT / "alertmanager"
RULES = AM_DIR / "router-alerts.yml"
FAST_RULES = AM_DIR / "router-alerts.fast.yml"
RULE_TESTS = AM_DIR / "router-alerts.test.yml"
SELF_RULES = AM_DIR / "remediator-alerts.yml"  # the remediator's own alerts (for people)
SELF_RULE_TESTS = AM_DIR / "remediator-alerts.test.yml"
AM_CONFIG = AM_DIR / "alertmanager.yml"
PROM_CONFIG = AM_DIR / "prometheus.yml"
RUNBOOK = ROOT / "docs" / "runbook" / "T-OPS-04-recovery-runbook.md"  # the project keeps its own copy
TOOL_TIMEOUT_S = 60

PACKAGES = {"promtool": "prometheus", "amtool": "prometheus-alertmanager"}
REMEDIATIONS = {"1A", "1B", "1C", "2", "4-latency", "4-429", "4-503", "4-stuck-queue", "notify-only"}


def tool(name: str) -> str:
    path = shutil.which(name, path="/usr/bin:/usr/sbin:/bin:/sbin:" + os.environ.get("PATH", ""))
    if path is None:
        pytest.fail(f"{name} is not installed: apt-get install {PACKAGES[name]}", pytrace=False)
    return path


def run(argv: list[str], cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=TOOL_TIMEOUT_S, check=False)


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def alert_rules(path: Path = RULES) -> list[dict[str, Any]]:
    return [rule for group in load(path)["groups"] for rule in group["rules"] if "alert" in rule]


def github_anchor(heading: str) -> str:
    """GitHub's heading slug: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_promtool_check_rules_accepts_both_rule_files() -> None:
    result = run([tool("promtool"), "check", "rules", str(RULES), str(FAST_RULES)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count(f"SUCCESS: {len(EXPECTED_ALERTS)} rules found") == 2, result.stdout


def test_promtool_rule_unit_tests_pass() -> None:
    result = run([tool("promtool"), "test", "rules", str(RULE_TESTS)], cwd=AM_DIR)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_the_remediators_own_alerts_check_and_pass_their_unit_tests() -> None:
    result = run([tool("promtool"), "check", "rules", str(SELF_RULES)])
    assert result.returncode == 0, result.stdout + result.stderr
    result = run([tool("promtool"), "test", "rules", str(SELF_RULE_TESTS)], cwd=AM_DIR)
    assert result.returncode == 0, result.stdout + result.stderr
    config = load(AM_CONFIG)
    people = {m for r in config["route"]["routes"] if r["receiver"] == "people" for m in r["matchers"]}
    for rule in alert_rules(SELF_RULES):
        assert f'alertname="{rule["alert"]}"' in people, f"{rule['alert']} must reach people, not the remediator"


def test_rule_unit_tests_catch_a_broken_rule(tmp_path: Path) -> None:
    # If `== 1` became `>= 1`, half-open breakers (2) would page as open: the tests must notice.
    text = RULES.read_text(encoding="utf-8")
    assert "router_circuit_breaker_state == 1" in text
    (tmp_path / RULES.name).write_text(
        text.replace("router_circuit_breaker_state == 1", "router_circuit_breaker_state >= 1")
    )
    shutil.copy(RULE_TESTS, tmp_path / RULE_TESTS.name)
    result = run([tool("promtool"), "test", "rules", RULE_TESTS.name], cwd=tmp_path)
    assert result.returncode != 0
    assert "CircuitBreakerOpen" in result.stdout + result.stderr


def test_every_alert_is_labelled_annotated_and_unit_tested() -> None:
    rules = alert_rules()
    assert {r["alert"] for r in rules} == EXPECTED_ALERTS
    anchors = {
        github_anchor(line.lstrip("#"))
        for line in RUNBOOK.read_text(encoding="utf-8").splitlines()
        if line.startswith("#")
    }
    for rule in rules:
        name = rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning"}, name
        assert rule["labels"]["remediation"] in REMEDIATIONS, name
        assert {"summary", "description", "runbook_url"} <= set(rule["annotations"]), name
        anchor = rule["annotations"]["runbook_url"].partition("#")[2]
        assert anchor in anchors, f"{name}: runbook_url anchor #{anchor} is not a T-OPS-04 heading"

    tested: dict[str, dict[str, int]] = {}
    for case in load(RULE_TESTS)["tests"]:
        for check in case.get("alert_rule_test", []):
            counts = tested.setdefault(check["alertname"], {"firing": 0, "quiet": 0})
            counts["firing" if check.get("exp_alerts") else "quiet"] += 1
    for name in EXPECTED_ALERTS:
        assert tested.get(name, {}).get("firing", 0) >= 1, f"{name} has no firing case"
        assert tested.get(name, {}).get("quiet", 0) >= 1, f"{name} has no not-firing case"


def test_fast_rules_are_generated_from_the_rules_with_for_0s() -> None:
    result = run([sys.executable, "-m", "demo.fast_rules", "--check"])
    assert result.returncode == 0, result.stderr
    fast = {r["alert"]: r for r in alert_rules(FAST_RULES)}
    for rule in alert_rules():
        assert fast[rule["alert"]]["for"] == "0s"
        assert {k: v for k, v in fast[rule["alert"]].items() if k != "for"} == {
            k: v for k, v in rule.items() if k != "for"
        }


def test_amtool_accepts_alertmanager_config_and_it_targets_the_remediator() -> None:
    result = run([tool("amtool"), "check-config", str(AM_CONFIG)])
    assert result.returncode == 0, result.stdout + result.stderr
    config = load(AM_CONFIG)
    receivers = {r["name"]: r for r in config["receivers"]}
    hook = receivers[config["route"]["receiver"]]["webhook_configs"][0]
    assert hook["url"] == "http://127.0.0.1:9095/hooks/alertmanager"
    assert hook["send_resolved"] is True
    # Alertmanager resolves a relative credentials_file against the config file's directory.
    token = AM_DIR / hook["http_config"]["authorization"]["credentials_file"]
    assert token.is_file() and token.read_text().strip()
    assert {"alertname", "instance", "tenant", "provider"} <= set(config["route"]["group_by"])
    names = {r["alert"] for r in alert_rules()}
    for inhibit in config["inhibit_rules"]:
        for matcher in inhibit["source_matchers"] + inhibit["target_matchers"]:
            value = matcher.split("=", 1)[1].strip('~"')
            assert set(value.split("|")) <= names, f"inhibit rule names an unknown alert: {matcher}"


def test_prometheus_config_is_valid_and_scrapes_the_router_job_the_rules_name() -> None:
    result = run([tool("promtool"), "check", "config", str(PROM_CONFIG)])
    assert result.returncode == 0, result.stdout + result.stderr
    config = load(PROM_CONFIG)
    jobs = {j["job_name"]: j["static_configs"][0]["targets"] for j in config["scrape_configs"]}
    assert jobs["beamline-router"] == ["127.0.0.1:9001"]
    router_down = next(r for r in alert_rules() if r["alert"] == "RouterDown")
    assert 'job="beamline-router"' in router_down["expr"]
    assert config["rule_files"] == [FAST_RULES.name]
    assert config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == ["127.0.0.1:9093"]
