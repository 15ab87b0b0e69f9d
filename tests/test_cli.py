"""The `remediator` command line, run as users run it: `python -m service.cli ...` in a subprocess."""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from demo.tour import build_parser as demo_parser
from service.alerts.webhook import WebhookNotification
from service.cli import build_parser
from service.store import NewExecution, SQLiteStore, StepRecord

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
FIRING = FIXTURES / "alertmanager" / "firing-nats-jetstream-unhealthy.json"
AT = datetime(2026, 11, 27, 19, 54, tzinfo=UTC)


def remediator(*args: str, cwd: Path = ROOT, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service.cli", *args],
        cwd=cwd,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)},
    )


@pytest.fixture
def config(tmp_path: Path) -> Path:
    """A config whose relative globs resolve against its own directory, with copies of the fixtures."""
    shutil.copytree(FIXTURES / "rules", tmp_path / "rules")
    shutil.copytree(FIXTURES / "playbooks", tmp_path / "playbooks")
    path = tmp_path / "remediator.yaml"
    path.write_text(
        yaml.safe_dump({"rules": ["rules/*.yaml"], "playbooks": ["playbooks/*.yaml"], "store": {"path": "r.db"}})
    )
    return path


def test_check_passes_on_good_fixtures_from_another_directory(config: Path, tmp_path: Path) -> None:
    result = remediator("check", "--config", str(config), cwd=tmp_path.parent)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "ok: 6 rules, 4 playbooks\n"
    assert result.stderr == ""


def test_check_lists_every_error_with_file_and_line(config: Path) -> None:
    for bad in ("invalid_regex.yaml", "unknown_playbook.yaml"):
        shutil.copy(FIXTURES / "bad_rules" / bad, config.parent / "rules" / bad)
    (config.parent / "token").write_text("")
    data = yaml.safe_load(config.read_text())
    config.write_text(yaml.safe_dump({**data, "operator": {"token_file": "token"}}))
    result = remediator("check", "--config", str(config))
    assert result.returncode == 1
    errors = result.stderr.splitlines()
    assert errors[0].startswith(f"{config}:") and errors[0].endswith(
        f"operator.token_file: secret file {config.parent}/token is empty"
    )
    assert errors[1] == 'rules/invalid_regex.yaml:5: rules[0].match[1]: invalid regex "(": RE2: missing ): ('
    assert errors[2].startswith('rules/unknown_playbook.yaml:4: rules[0].playbook: unknown playbook "nats-restrat"')
    assert len(errors) == 3
    assert result.stdout == "3 problems found\n"


def test_check_names_the_settings_line(tmp_path: Path) -> None:
    path = tmp_path / "remediator.yaml"
    path.write_text("listen_port: 9095\nlimits:\n  max_body_bytes: 10\n")
    result = remediator("check", "--config", str(path))
    assert result.returncode == 1
    assert result.stderr == f"{path}:3: limits.max_body_bytes: Input should be greater than or equal to 1024\n"


def test_check_with_alert_rules_reports_coverage(config: Path) -> None:
    result = remediator("check", "--config", str(config), "--alert-rules", "tests/fixtures/alert_rules/*.yml")
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "tests/fixtures/alert_rules/router.yml:14: alert NatsSlowConsumer is not covered by any rule",
        "rules/nats.yaml:16: rule nats-down matches no alert in the alert rule files",
        "rules/nats.yaml:22: rule jetstream-backlog matches no alert in the alert rule files",
    ]
    assert "note: rules/router.yaml:12: rule router-nats-flapping matches only on labels set by the series" in (
        result.stdout
    )


def test_empty_glob_from_the_environment_is_no_glob(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "service.cli", "check"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "REMEDIATOR_RULES": "", "REMEDIATOR_PLAYBOOKS": ""},
    )
    assert (result.returncode, result.stdout) == (0, "ok: 0 rules, 0 playbooks\n"), result.stderr


def test_rule_tests_pass(config: Path) -> None:
    result = remediator("test", "--config", str(config), "tests/fixtures/ruletests/good.yaml")
    assert result.returncode == 0, result.stdout
    assert result.stdout.endswith("5 tests, all passed\n")


def test_a_wrong_expectation_fails_with_a_diff(config: Path) -> None:
    result = remediator(
        "test", "--config", str(config), "tests/fixtures/ruletests/good.yaml", "tests/fixtures/ruletests/wrong.yaml"
    )
    assert result.returncode == 1
    assert "  FAIL  NatsDown passes the default scripts dir (tests/fixtures/ruletests/wrong.yaml:2)" in result.stdout
    assert "-    scripts_dir: /opt/beamline/scripts\n        +    scripts_dir: /srv/scripts\n" in result.stdout
    assert result.stdout.endswith("6 tests, 1 failed\n")


def test_rule_tests_refuse_invalid_rules(config: Path) -> None:
    shutil.copy(FIXTURES / "bad_rules" / "invalid_regex.yaml", config.parent / "rules")
    result = remediator("test", "--config", str(config), "tests/fixtures/ruletests/good.yaml")
    assert result.returncode == 1
    assert result.stderr.startswith("rules/invalid_regex.yaml:5: rules[0].match[1]: invalid regex")


def test_explain_names_the_failing_matcher(config: Path) -> None:
    result = remediator("explain", "--config", str(config), str(FIRING))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "  matched     nats-jetstream-unhealthy  (rules/nats.yaml:2)" in lines
    assert '      - label alertname="NatsJetStreamUnhealthy" does not match ="NatsDown"' in lines
    assert lines[-2] == "  => nats-jetstream-unhealthy: nats-restart on '127.0.0.1:19101' [enforce]"
    assert lines[-1] == f"  admission not evaluated: no store (none at {config.parent}/r.db)"
    assert not (config.parent / "r.db").exists()


async def _store_with_a_pause(path: Path) -> None:
    store = SQLiteStore(path)
    await store.open()
    try:
        await store.add_pause("*", "127.0.0.1:19101", "disk swap", "alice", datetime.now(UTC), None)
    finally:
        await store.close()


def test_explain_says_whether_admission_would_let_the_run_start_now(config: Path) -> None:
    asyncio.run(_store_with_a_pause(config.parent / "r.db"))
    result = remediator("explain", "--config", str(config), str(FIRING))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == (
        "  admission now: nats-jetstream-unhealthy: refuse (paused): automation paused for rule *,"
        " target 127.0.0.1:19101 by alice: disk swap"
    )
    as_json = json.loads(remediator("explain", "--config", str(config), "--json", str(FIRING)).stdout)
    assert [(a["decision"], a["reason"]) for a in as_json["alerts"][0]["admission"]] == [("refuse", "paused")]


def test_explain_json_from_stdin_with_a_list_of_alerts(config: Path) -> None:
    alerts = [{"labels": {"alertname": "NatsDown", "instance": "n1:8222", "env": "dev"}}]
    result = remediator("explain", "--config", str(config), "--json", "-", stdin=json.dumps(alerts))
    assert result.returncode == 0, result.stderr
    (alert,) = json.loads(result.stdout)["alerts"]
    assert alert["decisions"] == []
    verdict = next(r for r in alert["rules"] if r["rule"] == "nats-down")
    assert verdict["verdict"] == "not_matched"
    assert verdict["reasons"] == ['label env="dev" does not match !~"dev|test"']


@pytest.mark.parametrize(
    ("body", "error"),
    [("{", "Expecting property name enclosed in double quotes"), ('{"alerts": []}', "alerts: List should have")],
)
def test_explain_refuses_bad_input(config: Path, body: str, error: str) -> None:
    result = remediator("explain", "--config", str(config), "-", stdin=body)
    assert result.returncode == 1
    assert result.stderr.startswith(f"-: {error}")


def test_serve_refuses_invalid_rules(config: Path) -> None:
    shutil.copy(FIXTURES / "bad_rules" / "invalid_regex.yaml", config.parent / "rules")
    shutil.copy(FIXTURES / "bad_rules" / "unknown_playbook.yaml", config.parent / "rules")
    result = remediator("serve", "--config", str(config))
    assert result.returncode == 1
    assert result.stderr.splitlines()[0] == "remediator: refusing to serve: 2 error(s) in rules/playbooks"
    assert result.stderr.splitlines()[1].startswith("rules/invalid_regex.yaml:5: rules[0].match[1]")
    assert result.stderr.splitlines()[2].startswith("rules/unknown_playbook.yaml:4: rules[0].playbook")
    assert not (config.parent / "r.db").exists()


def test_serve_refuses_a_secret_variable_set_but_empty(config: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "service.cli", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "REMEDIATOR_WEBHOOK_BEARER_TOKEN": ""},
    )
    assert result.returncode == 1
    assert result.stderr == (
        "remediator: environment REMEDIATOR_WEBHOOK_BEARER_TOKEN: is set but empty; "
        "give the secret or unset the variable\n"
    )
    assert not (config.parent / "r.db").exists()


def test_serve_refuses_an_empty_config_file(tmp_path: Path) -> None:
    config = tmp_path / "remediator.yaml"
    config.write_bytes(b"\xef\xbb\xbf\n")
    result = remediator("serve", "--config", str(config))
    assert result.returncode == 1
    assert result.stderr == f"remediator: {config}: the file has no settings; write {{}} in it to run on the defaults\n"


async def _store_with_one_execution(path: Path) -> str:
    store = SQLiteStore(path)
    await store.open()
    try:
        body = FIRING.read_bytes()
        await store.record_notification(WebhookNotification.model_validate_json(body), body, AT)
        occurrence_id = await store.read(lambda conn: conn.execute("SELECT id FROM occurrences").fetchone()[0])
        execution = NewExecution(
            id="ex-1",
            rule="nats-jetstream-unhealthy",
            rule_version="r1",
            playbook="nats-restart",
            playbook_version="p1",
            target="127.0.0.1:19101",
            occurrence_id=occurrence_id,
            fingerprint="16ff7ec28276970a",
            alertname="NatsJetStreamUnhealthy",
            mode="enforce",
            params={"instance": "127.0.0.1:19101"},
            state="queued",
        )
        await store.create_execution(execution, AT)
        await store.set_state("ex-1", "running", AT)
        step = StepRecord("steps", "stop", "exec", 1, AT, 0.25, False, "failed", "exit 3", "stopping\nno pid\n", 3, {})
        await store.record_step("ex-1", step)
        await store.set_state("ex-1", "escalated", AT, "step stop failed: exit 3")
    finally:
        await store.close()
    return "ex-1"


def test_report_json_and_markdown(config: Path) -> None:
    execution_id = asyncio.run(_store_with_one_execution(config.parent / "r.db"))
    as_json = remediator("report", "--config", str(config), execution_id)
    assert as_json.returncode == 0, as_json.stderr
    report = json.loads(as_json.stdout)
    assert set(report) == {"execution", "alert", "steps", "timeline", "escalations", "approvals"}
    assert report["execution"]["state"] == "escalated"
    assert report["alert"]["labels"]["instance"] == "127.0.0.1:19101"
    assert [s["name"] for s in report["steps"]] == ["stop"]
    markdown = remediator("report", "--config", str(config), "--format", "md", execution_id)
    assert markdown.returncode == 0, markdown.stderr
    text = markdown.stdout
    assert text.startswith("# NatsJetStreamUnhealthy on 127.0.0.1:19101: escalated\n")
    assert "**Outcome:** `escalated`: step stop failed: exit 3" in text
    assert "**Report:** http://127.0.0.1:9095/executions/ex-1" in text
    assert "### 1. steps/stop (`exec`): failed" in text
    assert "```text\nstopping\nno pid\n```" in text
    page = remediator("report", "--config", str(config), "--format", "html", execution_id)
    assert page.returncode == 0, page.stderr
    assert page.stdout.startswith("<!doctype html>") or page.stdout.lstrip().lower().startswith("<!doctype html>")
    assert "no pid" in page.stdout and "NatsJetStreamUnhealthy" in page.stdout
    assert "<form" not in page.stdout  # a file has nobody to post to
    assert "runbook <strong>T-OPS-04 §1A</strong>" in page.stdout  # the playbook's, as the config loads it
    assert "2026-11-27 19:54:00.000Z" in page.stdout  # times with their date, in UTC
    assert "this page was made at" in page.stdout


def test_report_on_a_missing_id_exits_1(config: Path) -> None:
    asyncio.run(_store_with_one_execution(config.parent / "r.db"))
    result = remediator("report", "--config", str(config), "nope")
    assert result.returncode == 1
    assert result.stderr == f"remediator: no execution 'nope' in {config.parent}/r.db\n"
    assert result.stdout == ""


def test_report_without_a_store_exits_1_and_creates_none(config: Path) -> None:
    result = remediator("report", "--config", str(config), "ex-1")
    assert result.returncode == 1
    assert "no store at" in result.stderr
    assert not (config.parent / "r.db").exists()


def test_check_warns_about_an_exec_step_that_does_not_pass_what_its_script_requires(tmp_path: Path) -> None:
    """A custom playbook that forgets one setting: the script would stop (it has no default), and
    check says so first, naming the variable and the step."""
    (tmp_path / "rules").mkdir()
    (tmp_path / "playbooks").mkdir()
    (tmp_path / "rules" / "r.yaml").write_text(
        "rules:\n  - {name: restart, match: ['alertname=\"RouterDown\"'], playbook: restart}\n"
    )
    (tmp_path / "playbooks" / "restart.yaml").write_text(
        f"""\
name: restart
env:
  BEAMLINE_STATE_DIR: /tmp/nowhere
  BEAMLINE_ROUTER_TCP_PORT: "19000"
  BEAMLINE_ROUTER_HTTP_PORT: "19001"
  BEAMLINE_NATS_MONITOR_PORT: "18222"
steps:
  - name: start
    type: exec
    argv: [{ROOT}/demo/scripts/router_start.sh]
  - name: stop
    type: exec
    argv: [{ROOT}/demo/scripts/router_stop.sh]
"""
    )
    config = tmp_path / "remediator.yaml"
    config.write_text("rules: [rules/*.yaml]\nplaybooks: [playbooks/*.yaml]\n")
    result = remediator("check", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 0, result.stderr  # doubtful, not wrong
    assert result.stdout == "ok: 1 rules, 1 playbooks, 1 warning\n"
    assert result.stderr == (
        f"playbooks/restart.yaml:10: steps[0].argv[0]: warning: {ROOT}/demo/scripts/router_start.sh requires "
        "BEAMLINE_NATS_PORT (router_start.sh: ${BEAMLINE_NATS_PORT:?...}), which this step does not pass: "
        "set it in the playbook's env (or the step's)\n"
    )


def test_the_shipped_config_checks_without_warnings() -> None:
    result = remediator("check", "--config", "remediator.yaml")
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.startswith("ok: ") and "warning" not in result.stdout


# --- docs/cli.md is the parser's, argument for argument ----------------------------------------------


def _documented() -> tuple[list[str], dict[str, tuple[str, dict[str, str]]]]:
    """docs/cli.md's command table, and per command its section's heading and argument table
    (argument -> default)."""
    text = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    overview = text.split("\n## ")[0]
    commands = re.findall(r"^\| `(\w+)[^`]*` \|", overview, re.M)
    sections = {}
    for section in text.split("\n## `remediator ")[1:]:
        heading, _, body = section.partition("\n")
        rows = dict(re.findall(r"^\| `([^`]+)` \| ([^|]+) \|", body, re.M))
        sections[heading.split()[0].rstrip("`")] = (heading, {k: v.strip() for k, v in rows.items()})
    return commands, sections


def _parsers() -> dict[str, argparse.ArgumentParser]:
    [commands] = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    parsers: dict[str, argparse.ArgumentParser] = dict(commands.choices)
    parsers["demo"] = demo_parser()  # `remediator demo` hands its arguments to the checkout's demo
    return parsers


def _argument(action: argparse.Action) -> str:
    """An argument as the docs name it: `--opt METAVAR`, `--opt` (a flag, or one with choices), `NAME...`."""
    many = "..." if action.nargs == "+" else ""
    if not action.option_strings:
        return f"{action.metavar or action.dest}{many}"
    if action.nargs == 0 or action.choices:
        return action.option_strings[-1]
    return f"{action.option_strings[-1]} {action.metavar or action.dest.upper()}{many}"


def test_the_cli_doc_lists_every_command_argument_and_default_the_parser_has() -> None:
    commands, sections = _documented()
    parsers = _parsers()
    assert commands == list(parsers)
    assert sorted(sections) == sorted(parsers)
    for name, parser in parsers.items():
        heading, rows = sections[name]
        actions = [a for a in parser._actions if not isinstance(a, argparse._HelpAction)]
        assert sorted(rows) == sorted(_argument(a) for a in actions), name
        for action in actions:
            documented = rows[_argument(action)]
            if action.default is False:
                assert documented == "off", (name, action.dest)
            elif action.default in (None, []):
                assert documented.startswith("none"), (name, action.dest)
            else:
                assert documented == f"`{action.default}`", (name, action.dest)
                assert f"default: {action.default}" in parser.format_help().replace("\n", " ")
            synopsis = _argument(action)
            if action.choices:
                synopsis += " " + "|".join(action.choices)
            assert (f"[{synopsis}]" if action.option_strings else synopsis) in heading, (name, synopsis)
