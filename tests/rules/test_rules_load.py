"""Rules loading: one bad-rules fixture per error class, each with its exact message."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.rules.loading import load_ruleset
from service.rules.rule import DEFAULT_TARGET
from service.rules.ruleset import Alert, NotificationContext, RuleSet
from service.yamlload import ConfigErrors

ROOT = Path(__file__).resolve().parent.parent.parent
FIXTURES = "tests/fixtures"
PLAYBOOKS = [f"{FIXTURES}/playbooks/*.yaml"]
BAD = f"{FIXTURES}/bad_rules"
RULE_VARS = (
    "annotations, commonAnnotations, commonLabels, externalURL, fingerprint, generatorURL, groupLabels, labels, "
    "receiver, startsAt, status"
)
PLAYBOOK_NAMES = "circuit-breaker-recovery, jetstream-purge, nats-restart, router-rolling-restart"

EXPECTED = {
    "invalid_regex": ':5: rules[0].match[1]: invalid regex "(": RE2: missing ): (',
    "re2_unsupported": ':4: rules[0].match[0]: invalid regex "(?!Nats).*": RE2: invalid perl operator: (?!',
    "bad_matcher_format": ':4: rules[0].match[0]: bad matcher format: alert-name="NatsDown"',
    "unknown_field": ":9: rules[0].limits.max_run: unknown field; did you mean `max_runs`?",
    "double_equals": ':3: rules[0].match[0]: `==` is not an operator: write alertname="NatsDown" (operators: =, !=, =~, !~)',
    "missing_field": ":2: rules[0].playbook: required field is missing",
    "bad_enum": ":4: rules[0].status: Input should be 'firing', 'resolved' or 'any'",
    "bad_duration": (
        ":8: rules[0].limits.cooldown: invalid duration '5 minutes': expected seconds or e.g. 30s, 5m, 1h30m, 2d"
    ),
    "empty_match": ":3: rules[0].match: List should have at least 1 item after validation, not 0",
    "unknown_playbook": f':4: rules[0].playbook: unknown playbook "nats-restrat" (known: {PLAYBOOK_NAMES})',
    "missing_required_param": ':5: rules[0].params: playbook "nats-restart" requires param "instance"',
    "undeclared_param": ':7: rules[0].params.node: param "node" is not declared by playbook "nats-restart"',
    "literal_param_refused": (
        ':7: rules[0].params.provider: value "openai; rm -rf /" is not one of the allowed values '
        "['openai', 'anthropic', 'mistral']"
    ),
    "unknown_template_variable": f":6: rules[0].params.instance: unknown template variable label (known: {RULE_VARS})",
    "template_syntax": (
        ':7: rules[0].target: template "{{ labels.instance ": syntax error: '
        "unexpected end of template, expected 'end of print statement'."
    ),
    "duplicate_rule_name": f':7: rules[1].name: duplicate rule name "a" (first at {BAD}/duplicate_rule_name.yaml:2)',
    "duplicate_key": ':5: rules[0].playbook: duplicate key "playbook" (first at line 4)',
    "yaml_syntax": ":4: invalid YAML: expected ',' or ']', but got '<scalar>'",
}


def test_every_fixture_has_an_expectation() -> None:
    assert {p.stem for p in (ROOT / BAD).glob("*.yaml")} == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_bad_rules_fixture_gives_exact_error(name: str) -> None:
    with pytest.raises(ConfigErrors) as info:
        load_ruleset([f"{BAD}/{name}.yaml"], PLAYBOOKS, ROOT)
    assert [str(e) for e in info.value.errors] == [f"{BAD}/{name}.yaml{EXPECTED[name]}"]


@pytest.fixture
def ruleset() -> RuleSet:
    return load_ruleset([f"{FIXTURES}/rules/*.yaml"], PLAYBOOKS, ROOT)


def test_good_rules_load_in_file_order(ruleset: RuleSet) -> None:
    assert [r.name for r in ruleset.rules] == [
        "nats-jetstream-unhealthy",
        "nats-down",
        "jetstream-backlog",
        "jetstream-backlog-note",
        "circuit-open",
        "router-nats-flapping",
    ]
    first = ruleset.rules[0]
    assert (first.file, first.line) == (f"{FIXTURES}/rules/nats.yaml", 2)
    assert first.rule.limits.cooldown == 600 and first.rule.limits.window == 3600
    assert first.rule.target == DEFAULT_TARGET


def test_rule_version_changes_only_with_meaning(tmp_path: Path) -> None:
    text = (ROOT / FIXTURES / "rules" / "nats.yaml").read_text()
    (tmp_path / "a.yaml").write_text(text)
    (tmp_path / "b.yaml").write_text("# a comment changes nothing\n" + text)
    (tmp_path / "c.yaml").write_text(text.replace("max_runs: 2", "max_runs: 3"))
    playbooks = [str(ROOT / FIXTURES / "playbooks" / "*.yaml")]
    versions = {
        name: load_ruleset([name], playbooks, tmp_path).rules[0].version for name in ("a.yaml", "b.yaml", "c.yaml")
    }
    assert versions["a.yaml"] == versions["b.yaml"] != versions["c.yaml"]


def test_duplicate_names_across_files(tmp_path: Path) -> None:
    rule = (
        "rules:\n  - name: same\n    match: ['alertname=\"X\"']\n"
        "    playbook: jetstream-purge\n    params: {stream: DECIDE}\n"
    )
    (tmp_path / "a.yaml").write_text(rule)
    (tmp_path / "b.yaml").write_text("\n" + rule)
    with pytest.raises(ConfigErrors) as info:
        load_ruleset(["*.yaml"], [str(ROOT / FIXTURES / "playbooks" / "*.yaml")], tmp_path)
    assert [str(e) for e in info.value.errors] == [
        'b.yaml:3: rules[0].name: duplicate rule name "same" (first at a.yaml:2)'
    ]


def test_glob_matching_nothing_is_an_error() -> None:
    with pytest.raises(ConfigErrors) as info:
        load_ruleset(["nope/*.yaml"], PLAYBOOKS, ROOT)
    assert [str(e) for e in info.value.errors] == ["nope/*.yaml: no files match"]


def test_rule_errors_still_listed_when_playbooks_fail(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text("name: p\nsteps: []\n")
    (tmp_path / "r.yaml").write_text("rules:\n  - name: r\n    match: ['a=~\"(\"']\n    playbook: p\n")
    with pytest.raises(ConfigErrors) as info:
        load_ruleset(["r.yaml"], ["p.yaml"], tmp_path)
    assert [str(e) for e in info.value.errors] == [
        "p.yaml:2: steps: List should have at least 1 item after validation, not 0",
        'r.yaml:3: rules[0].match[0]: invalid regex "(": RE2: missing ): (',
    ]


def test_first_match_wins_and_continue(ruleset: RuleSet) -> None:
    alert = Alert({"alertname": "NatsDown", "instance": "n1:8222", "env": "prod"})
    assert [m.rule.name for m in ruleset.match(alert)] == ["nats-down"]
    backlog = Alert({"alertname": "JetStreamConsumerBacklog", "stream": "DECIDE"})
    matches = ruleset.match(backlog)
    # jetstream-backlog has continue: true; the next rule for the same alert is disabled.
    assert [(m.rule.name, m.mode, m.target) for m in matches] == [("jetstream-backlog", "shadow", "DECIDE")]


def test_status_filter(ruleset: RuleSet) -> None:
    firing = Alert({"alertname": "NatsDown", "instance": "n1:8222"})
    resolved = Alert({"alertname": "NatsDown", "instance": "n1:8222"}, status="resolved")
    assert ruleset.match(firing) and not ruleset.match(resolved)


def test_params_rendered_defaulted_and_coerced(ruleset: RuleSet) -> None:
    alert = Alert({"alertname": "RouterCircuitBreakerOpen", "tenant": "acme", "provider": "openai"})
    (m,) = ruleset.match(alert, NotificationContext(external_url="http://am"))
    assert dict(m.params) == {"tenant": "acme", "provider": "openai", "dry": False}
    assert m.target == "acme/openai"
    assert m.ok and m.playbook_version == ruleset.playbooks["circuit-breaker-recovery"].version


def test_hostile_label_value_is_refused_not_run(ruleset: RuleSet) -> None:
    alert = Alert({"alertname": "RouterCircuitBreakerOpen", "tenant": "; rm -rf /", "provider": "openai"})
    (m,) = ruleset.match(alert)
    assert not m.ok
    assert m.error == (
        'params for playbook "circuit-breaker-recovery" refused: '
        'param "tenant": value "; rm -rf /" does not match pattern "[a-z0-9_-]{1,64}"'
    )


def test_render_error_is_not_a_match_and_later_rules_are_tried(tmp_path: Path) -> None:
    (tmp_path / "r.yaml").write_text(
        "rules:\n"
        "  - name: needs-stream\n    match: ['alertname=\"B\"']\n    playbook: jetstream-purge\n"
        "    params: {stream: '{{ labels.stream }}'}\n"
        "  - name: fallback\n    match: ['alertname=\"B\"']\n    playbook: jetstream-purge\n"
        "    params: {stream: DECIDE}\n"
    )
    ruleset = load_ruleset(["r.yaml"], [str(ROOT / FIXTURES / "playbooks" / "*.yaml")], tmp_path)
    first, second = ruleset.match(Alert({"alertname": "B"}))
    assert not first.ok and "has no attribute 'stream'" in (first.error or "")
    assert second.ok and second.rule.name == "fallback"
    # The default target falls back to the fingerprint when there is no instance label.
    assert second.target == Alert({"alertname": "B"}).fingerprint


def test_fingerprint_is_alertmanagers() -> None:
    labels = {
        "alertname": "NatsJetStreamUnhealthy",
        "cluster": "lab",
        "instance": "127.0.0.1:19101",
        "job": "nats",
        "lab": "am-capture",
        "remediation": "restart-nats",
        "severity": "critical",
    }
    # Taken from a real Alertmanager notification (tests/fixtures/alertmanager/).
    assert Alert(labels).fingerprint == "16ff7ec28276970a"


def test_index_agrees_with_linear_scan(ruleset: RuleSet) -> None:
    alerts = [
        Alert({"alertname": "NatsDown", "env": "dev"}),
        Alert({"alertname": "NatsJetStreamUnhealthy", "severity": "page", "instance": "x:1"}),
        Alert({"alertname": "Other", "router_nats": "lost"}),
        Alert({"router_nats": "flapping"}),
        Alert({}),
    ]
    for alert in alerts:
        linear = [
            r.name
            for r in ruleset.rules
            if r.rule.enabled and r.status_ok(alert.status) and all(m.matches(alert.labels) for m in r.matchers)
        ]
        assert [r.name for r in ruleset.matching_rules(alert)] == linear
