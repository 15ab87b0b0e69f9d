from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from service.playbooks.loading import load_playbooks, playbook_from_source
from service.playbooks.params import ParamError, validate_params
from service.playbooks.playbook import ApprovalStep, LoadedPlaybook, RollingStep, rolling_items
from service.playbooks.templating import TemplateEngine
from service.steps.exec import Spec as ExecSpec
from service.yamlload import ConfigErrors

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "playbooks"


def load(text: str) -> LoadedPlaybook:
    return playbook_from_source(text.encode(), "p.yaml", TemplateEngine())


def errors_of(text: str) -> list[str]:
    with pytest.raises(ConfigErrors) as info:
        load(text)
    return [str(e) for e in info.value.errors]


def test_fixture_playbooks_load_with_content_hash() -> None:
    files = [(p, p.name) for p in sorted(FIXTURES.glob("*.yaml"))]
    playbooks = load_playbooks(files, TemplateEngine())
    assert sorted(playbooks) == [
        "circuit-breaker-recovery",
        "jetstream-purge",
        "nats-restart",
        "router-rolling-restart",
    ]
    nats = playbooks["nats-restart"]
    assert nats.version == hashlib.sha256((FIXTURES / "nats-restart.yaml").read_bytes()).hexdigest()
    assert nats.playbook.runbook == "T-OPS-04 §1A" and nats.playbook.timeout == 300 and nats.playbook.idempotent
    assert isinstance(nats.playbook.steps[0], ExecSpec)
    assert nats.playbook.verify is not None and nats.playbook.verify.interval == 5
    rolling = playbooks["router-rolling-restart"].playbook.steps[0]
    assert isinstance(rolling, RollingStep) and rolling.var == "node" and rolling.check is not None
    assert isinstance(playbooks["jetstream-purge"].playbook.steps[1], ApprovalStep)


MINIMAL = """\
name: p
params:
  node: {pattern: "[a-z0-9-]+"}
steps:
  - name: one
    type: exec
    argv: ["echo", "{{ params.node }}"]
"""


def test_minimal_playbook_defaults() -> None:
    pb = load(MINIMAL).playbook
    assert pb.on_resolved == "continue" and pb.on_failure.escalate and pb.verify is None
    assert pb.params["node"].is_required and pb.params["node"].max_length == 256


PURGE_WITHOUT_APPROVAL = """\
name: p
steps:
  - name: purge
    type: nats
    action: purge_stream
    stream: DECIDE
"""


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            PURGE_WITHOUT_APPROVAL,
            "p.yaml:5: steps[0].action: purge_stream needs an approval step before it in the same playbook "
            "(unconditional, without allow_failure)",
        ),
        (
            # An approval whose denial is ignored gates nothing.
            PURGE_WITHOUT_APPROVAL.replace(
                "steps:\n", "steps:\n  - {type: approval, prompt: 'sure?', allow_failure: true}\n"
            ),
            "p.yaml:6: steps[1].action: purge_stream needs an approval step before it in the same playbook "
            "(unconditional, without allow_failure)",
        ),
        (
            # on_failure runs exactly when the main approval was denied, so it needs its own.
            "name: p\nsteps:\n  - {type: approval, prompt: 'sure?'}\non_failure:\n  steps:\n"
            "    - {type: nats, action: purge_stream, stream: S}\n",
            "p.yaml:6: on_failure.steps[0].action: purge_stream needs an approval step before it in the same "
            "playbook (unconditional, without allow_failure)",
        ),
        (
            MINIMAL + "  - name: one\n    type: wait\n    seconds: 1\n",
            'p.yaml:8: steps[1].name: duplicate step name "one" (first at line 5)',
        ),
        (
            MINIMAL.replace("params.node", "params.nod"),
            "p.yaml:7: steps[0].argv[1]: params.nod is not a declared param",
        ),
        (
            MINIMAL.replace("{{ params.node }}", "{{ steps.later.output }}")
            + "  - name: later\n    type: wait\n    seconds: 1\n",
            "p.yaml:7: steps[0].argv[1]: steps.later does not name an earlier step",
        ),
        (
            MINIMAL.replace("params.node", "alert.node"),
            "p.yaml:7: steps[0].argv[1]: unknown template variable alert "
            "(known: annotations, execution, labels, now, params, steps)",
        ),
        (
            MINIMAL.replace("params.node", "execution.started"),
            "p.yaml:7: steps[0].argv[1]: execution.started is not provided "
            "(known: fingerprint, host, hosts, id, playbook, rule, started_at, target)",
        ),
        (
            MINIMAL + "    when: \"time_in(after='8h', tz='UTC')\"\n",
            "p.yaml:8: steps[0].when: time_in(): after='8h': expected a time of day as HH:MM or HH:MM:SS",
        ),
        (
            MINIMAL + "    when: \"not time_in(before='18:00', weekday=['mon', 'fry'], tz='Europe/Berlin')\"\n",
            "p.yaml:8: steps[0].when: time_in(): weekday 'fry': expected mon, tue, wed, thu, fri, sat, sun, "
            "or a range such as mon-fri",
        ),
        (
            MINIMAL.replace("params.node", "time_in(after='08:00', tz='Mars/Olympus')"),
            "p.yaml:7: steps[0].argv[1]: time_in(): unknown time zone 'Mars/Olympus' (an IANA name such as UTC or "
            "Europe/Berlin)",
        ),
        (
            MINIMAL + "    when: steps.nope.ok\n",
            "p.yaml:8: steps[0].when: steps.nope does not name an earlier step",
        ),
        (
            MINIMAL.replace("type: exec", "type: shell"),
            "p.yaml:6: steps[0].type: Input tag 'shell' found using 'type' does not match any of the expected tags: "
            "'exec', 'ssh', 'http', 'tcp', 'promql', 'nats', 'wait', 'approval', 'rolling', 'escalate'",
        ),
        (
            MINIMAL.replace('argv: ["echo", "{{ params.node }}"]', "argv: []"),
            "p.yaml:7: steps[0].argv: List should have at least 1 item after validation, not 0",
        ),
        (
            MINIMAL.replace("    argv:", "    argz: [x]\n    argv:"),
            "p.yaml:7: steps[0].argz: unknown field; did you mean `argv`?",
        ),
        (
            MINIMAL.replace(
                'type: exec\n    argv: ["echo", "{{ params.node }}"]', "type: http\n    url: x\n    jsn: {}"
            ),
            "p.yaml:8: steps[0].jsn: unknown field; did you mean `json`?",
        ),
        (
            MINIMAL.replace("type: exec", "type: exce"),
            "p.yaml:6: steps[0].type: Input tag 'exce' found using 'type' does not match any of the expected tags: "
            "'exec', 'ssh', 'http', 'tcp', 'promql', 'nats', 'wait', 'approval', 'rolling', 'escalate'; did you mean"
            " `exec`?",
        ),
        (
            MINIMAL.replace("    argv:", "    expectExit: [0]\n    argv:"),
            "p.yaml:7: steps[0].expectExit: unknown field; did you mean `expect_exit`?",
        ),
        (
            MINIMAL.replace("    argv:", "    timeout: 1m\n    argv:").replace("steps:", "timeOut: 5m\nsteps:"),
            "p.yaml:4: timeOut: unknown field; did you mean `timeout`?",
        ),
        (
            MINIMAL.replace('{pattern: "[a-z0-9-]+"}', '{pattern: "[a-z"}'),
            'p.yaml:3: params.node.pattern: invalid regex "[a-z": RE2: missing ]: [a-z',
        ),
        (
            MINIMAL.replace('{pattern: "[a-z0-9-]+"}', '{type: int, default: "x"}'),
            'p.yaml:3: params.node: default: expected an integer, got "x"',
        ),
        (
            "name: p\nsteps:\n  - type: rolling\n    items: [a]\n    var: params\n"
            "    steps: [{type: wait, seconds: 1}]\n",
            'p.yaml:5: steps[0].var: "params" would hide the playbook variable of that name',
        ),
        (
            "name: p\nsteps: [{type: wait, seconds: 1}]\nverify:\n  interval: 10m\n  within: 1m\n"
            "  checks: [{type: alert_resolved}]\n",
            "p.yaml:3: verify: interval is longer than within",
        ),
        (
            "name: p\nsteps: [{type: wait, seconds: 1}]\nverify:\n  checks:\n"
            "    - {type: nats, action: purge_stream, stream: S}\n",
            "p.yaml:5: verify.checks[0].action: a verification check must not purge a stream",
        ),
        (
            "name: p\nsteps:\n  - {type: nats, action: consumer_info, stream: S}\n",
            "p.yaml:3: steps[0]: action 'consumer_info' needs 'consumer'",
        ),
        (
            "name: P Q\nsteps: [{type: wait, seconds: 1}]\n",
            "p.yaml:1: name: String should match pattern '^[a-z0-9][a-z0-9_.-]*$'",
        ),
    ],
)
def test_playbook_errors(text: str, expected: str) -> None:
    assert errors_of(text) == [expected]


def test_purge_after_approval_loads_and_rolling_scope() -> None:
    load(
        "name: p\nsteps:\n  - {type: approval, prompt: 'purge?'}\n"
        "  - type: rolling\n    items: '{{ labels.nodes }}'\n    steps:\n"
        "      - {name: s, type: exec, argv: ['restart', '{{ item }}']}\n"
        "      - {type: nats, action: purge_stream, stream: '{{ item }}'}\n"
    )
    # The rolling variable is only known inside the rolling step.
    assert errors_of(
        "name: p\nsteps:\n  - type: rolling\n    items: [a, b]\n    steps: [{type: wait, seconds: 1}]\n"
        "  - {type: exec, argv: ['{{ item }}']}\n"
    ) == [
        "p.yaml:6: steps[1].argv[0]: unknown template variable item "
        "(known: annotations, execution, labels, now, params, steps)"
    ]


def test_duplicate_playbook_names(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(MINIMAL)
    (tmp_path / "b.yaml").write_text(MINIMAL)
    with pytest.raises(ConfigErrors) as info:
        load_playbooks([(tmp_path / "a.yaml", "a.yaml"), (tmp_path / "b.yaml", "b.yaml")], TemplateEngine())
    assert [str(e) for e in info.value.errors] == ['b.yaml:1: name: duplicate playbook name "p" (also in a.yaml)']


PARAMS = """\
name: p
params:
  node: {pattern: "[a-z0-9-]+", max_length: 20}
  port: {type: int, allow: [9000, 9001]}
  ratio: {type: float, default: 0.5}
  force: {type: bool, default: false}
  region: {allow: [eu, us], required: false}
steps: [{type: wait, seconds: 1}]
"""


def test_validate_params_coerces_and_defaults() -> None:
    pb = load(PARAMS).playbook
    assert validate_params(pb, {"node": "router-1", "port": "9001", "force": "yes"}) == {
        "node": "router-1",
        "port": 9001,
        "ratio": 0.5,
        "force": True,
    }


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (
            {"node": "; rm -rf /", "port": "9000"},
            'param "node": value "; rm -rf /" does not match pattern "[a-z0-9-]+"',
        ),
        ({"node": "a\nb", "port": "9000"}, 'param "node": value "a\\nb" does not match pattern "[a-z0-9-]+"'),
        ({"node": "../etc", "port": "9000"}, 'param "node": value "../etc" does not match pattern "[a-z0-9-]+"'),
        ({"node": "a" * 10_000, "port": "9000"}, 'param "node": value is 10000 characters long, over max_length 20'),
        ({"node": "a", "port": "22"}, 'param "port": value "22" is not one of the allowed values [9000, 9001]'),
        ({"node": "a", "port": "9000 "}, None),
        ({"node": "a", "port": "x"}, 'param "port": expected an integer, got "x"'),
        ({"node": "a", "port": "9000", "ratio": "nan"}, 'param "ratio": expected a finite number, got "nan"'),
        (
            {"node": "a", "port": "9000", "force": "maybe"},
            'param "force": expected a boolean (true/false), got "maybe"',
        ),
        (
            {"node": "a", "port": "9000", "region": "mars"},
            "param \"region\": value \"mars\" is not one of the allowed values ['eu', 'us']",
        ),
        ({"port": "9000"}, 'param "node" is required'),
        ({"node": "a", "port": "9000", "extra": "x"}, 'param "extra" is not declared by the playbook'),
        ({"node": "a\x00b", "port": "9000"}, 'param "node": value contains a NUL character'),
    ],
)
def test_validate_params_refuses(raw: dict[str, str], problem: str | None) -> None:
    pb = load(PARAMS).playbook
    if problem is None:
        assert validate_params(pb, raw)["port"] == 9000
        return
    with pytest.raises(ParamError) as info:
        validate_params(pb, raw)
    assert info.value.problems == (problem,)
    assert str(info.value).startswith('params for playbook "p" refused: ')


def test_rolling_items() -> None:
    engine = TemplateEngine()
    step = RollingStep.model_validate(
        {"type": "rolling", "items": "{{ labels.nodes }}", "steps": [{"type": "wait", "seconds": 1}]}
    )
    assert rolling_items(step, engine, {"labels": {"nodes": "r1, r2 r3,,"}}) == ["r1", "r2", "r3"]
    listed = step.model_copy(update={"items": ["{{ labels.a }}", "", "b"]})
    assert rolling_items(listed, engine, {"labels": {"a": "x"}}) == ["x", "b"]


def test_the_playbook_env_is_every_exec_steps_and_a_steps_own_env_wins() -> None:
    loaded = load(
        """\
name: p
params:
  port: {type: int, default: 4222}
env:
  SHARED: "{{ params.port }}"
  OVERRIDDEN: playbook
steps:
  - {name: a, type: exec, argv: [x], env: {OVERRIDDEN: step}}
  - name: roll
    type: rolling
    items: [n1]
    steps: [{name: b, type: exec, argv: [x]}]
    check: {checks: [{name: c, type: exec, argv: [x]}]}
  - {name: wait, type: wait, seconds: 1}
verify:
  checks: [{name: d, type: exec, argv: [x]}]
on_failure:
  steps: [{name: e, type: exec, argv: [x]}]
"""
    ).playbook
    first, roll, _ = loaded.steps
    assert isinstance(first, ExecSpec) and isinstance(roll, RollingStep) and roll.check and loaded.verify
    shared = {"SHARED": "{{ params.port }}", "OVERRIDDEN": "playbook"}
    assert first.env == {"SHARED": "{{ params.port }}", "OVERRIDDEN": "step"}
    others = [roll.steps[0], roll.check.checks[0], loaded.verify.checks[0], loaded.on_failure.steps[0]]
    assert [step.env for step in others] == [shared] * 4


def test_the_playbook_env_is_checked_like_a_steps() -> None:
    assert errors_of(
        "name: p\nenv:\n  A: '{{ params.nope }}'\n  B: '{{ steps.first.output }}'\n  PATH: /x\n"
        "steps:\n  - {name: first, type: exec, argv: [x]}\n"
    ) == ["p.yaml:2: env: PATH cannot be set; give argv[0] as an absolute path instead"]
    assert errors_of(
        "name: p\nenv:\n  A: '{{ params.nope }}'\n  B: '{{ steps.first.output }}'\n"
        "steps:\n  - {name: first, type: exec, argv: [x]}\n"
    ) == [
        "p.yaml:3: env.A: params.nope is not a declared param",
        "p.yaml:4: env.B: steps.first does not name an earlier step",
    ]
