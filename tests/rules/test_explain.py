from __future__ import annotations

import json
from pathlib import Path

import pytest

from service.rules.coverage import coverage, load_alerting_rules
from service.rules.explain import explain_payload, format_explanation, parse_alerts
from service.rules.loading import check_config
from service.rules.ruleset import RuleSet

ROOT = Path(__file__).resolve().parent.parent.parent
FIXTURES = ROOT / "tests" / "fixtures"


@pytest.fixture(scope="module")
def ruleset() -> RuleSet:
    ruleset, errors = check_config(["tests/fixtures/rules/*.yaml"], ["tests/fixtures/playbooks/*.yaml"], ROOT)
    assert errors == [] and ruleset is not None
    return ruleset


def test_explain_real_alertmanager_notification(ruleset: RuleSet) -> None:
    body = json.loads((FIXTURES / "alertmanager" / "firing-nats-jetstream-unhealthy.json").read_text())
    result = explain_payload(ruleset, body)
    json.dumps(result)  # JSON-able as the simulate endpoint returns it
    (alert,) = result["alerts"]
    assert alert["fingerprint"] == "16ff7ec28276970a"
    assert [d["rule"] for d in alert["decisions"]] == ["nats-jetstream-unhealthy"]
    verdicts = {r["rule"]: (r["verdict"], r["reasons"]) for r in alert["rules"]}
    assert verdicts["nats-jetstream-unhealthy"] == ("matched", [])
    assert verdicts["nats-down"] == (
        "not_matched",
        ['label alertname="NatsJetStreamUnhealthy" does not match ="NatsDown"'],
    )
    assert verdicts["jetstream-backlog-note"][0] == "disabled"
    assert verdicts["router-nats-flapping"] == (
        "not_matched",
        ['label router_nats is missing (counts as "") and does not match =~"flapping|lost"'],
    )
    first = alert["rules"][0]
    assert first["file"] == "tests/fixtures/rules/nats.yaml" and first["line"] == 2
    assert first["would_run"]["params"] == {"instance": "127.0.0.1:19101", "scripts_dir": "/opt/beamline/scripts"}
    assert [m["ok"] for m in first["matchers"]] == [True, True, True]


def test_explain_shows_not_reached_and_errors(ruleset: RuleSet) -> None:
    result = explain_payload(
        ruleset,
        [
            {"labels": {"alertname": "NatsDown", "instance": "n:1", "router_nats": "lost"}},
            {"labels": {"alertname": "RouterCircuitBreakerOpen", "tenant": "a b", "provider": "openai"}},
        ],
    )
    first, second = result["alerts"]
    by_rule = {r["rule"]: r for r in first["rules"]}
    assert by_rule["router-nats-flapping"]["verdict"] == "not_reached"
    assert by_rule["router-nats-flapping"]["reasons"] == [
        'would match, but rule "nats-down" matched earlier without continue'
    ]
    circuit = next(r for r in second["rules"] if r["rule"] == "circuit-open")
    assert circuit["verdict"] == "error"
    assert 'param "tenant": value "a b" does not match pattern' in circuit["reasons"][0]
    text = format_explanation(result)
    assert "  => nats-down: nats-restart on 'n:1' [enforce]\n" in text
    assert "  => circuit-open: refused: params for playbook" in text


def test_explain_status_reason(ruleset: RuleSet) -> None:
    result = explain_payload(ruleset, {"labels": {"alertname": "NatsDown"}, "status": "resolved"})
    nats_down = next(r for r in result["alerts"][0]["rules"] if r["rule"] == "nats-down")
    assert nats_down["reasons"] == ["alert status resolved is not the rule's status firing"]
    assert result["alerts"][0]["decisions"] == []


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"alerts": []}, "alerts: List should have at least 1 item after validation, not 0"),
        ([{"labels": {"a": 1}}], "alerts.0.labels.a: Input should be a valid string"),
        ([{"labels": {}, "status": "pending"}], "alerts.0.status: Input should be 'firing' or 'resolved'"),
        ("nonsense", "body: Input should be a valid dictionary or instance of _Payload"),
    ],
)
def test_bad_payloads(payload: object, message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_alerts(payload)
    assert str(info.value) == message


def test_check_config_lists_errors() -> None:
    ruleset, errors = check_config(
        ["tests/fixtures/bad_rules/invalid_regex.yaml"], ["tests/fixtures/playbooks/*.yaml"], ROOT
    )
    assert ruleset is None
    assert [str(e) for e in errors] == [
        'tests/fixtures/bad_rules/invalid_regex.yaml:5: rules[0].match[1]: invalid regex "(": RE2: missing ): ('
    ]


def test_coverage(ruleset: RuleSet) -> None:
    alerts, errors = load_alerting_rules(["tests/fixtures/alert_rules/*.yml"], ROOT)
    assert errors == []
    assert [(a.alert, a.line) for a in alerts] == [
        ("NatsJetStreamUnhealthy", 4),
        ("NatsSlowConsumer", 14),
        ("NatsDevOnly", 18),
        ("RouterCircuitBreakerOpen", 25),
    ]
    report = coverage(ruleset, alerts)
    assert report.lines() == [
        "tests/fixtures/alert_rules/router.yml:14: alert NatsSlowConsumer is not covered by any rule",
        "tests/fixtures/rules/nats.yaml:16: rule nats-down matches no alert in the alert rule files",
        "tests/fixtures/rules/nats.yaml:22: rule jetstream-backlog matches no alert in the alert rule files",
        "tests/fixtures/rules/router.yaml:12: rule router-nats-flapping matches only on labels set by the series; "
        "not checked",
    ]
    assert not report.ok
