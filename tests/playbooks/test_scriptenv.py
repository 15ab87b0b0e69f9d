"""What a runbook script requires, read from the script and the files beside it that it sources."""

from __future__ import annotations

from pathlib import Path

from service.playbooks.scriptenv import missing_variables, required_variables

ROOT = Path(__file__).resolve().parent.parent.parent


def test_a_script_requires_what_it_and_its_sourced_siblings_say(tmp_path: Path) -> None:
    (tmp_path / "_lib.sh").write_text('# a comment quoting ${NOT_THIS:?x} is no requirement\n: "${STATE:?where}"\n')
    script = tmp_path / "run.sh"
    script.write_text(
        '#!/usr/bin/env bash\n: "${PORT:?the port}"\nsource "$(dirname -- "${BASH_SOURCE[0]}")/_lib.sh"\n'
        'echo "${OPTIONAL:-x} ${ALSO?y}"\n'
    )
    required = required_variables(script)
    assert required == {"PORT": script, "ALSO": script, "STATE": tmp_path / "_lib.sh"}
    assert missing_variables(required, {"PORT": "1", "STATE": ""}) == ["ALSO", "STATE"]  # empty is missing


def test_nothing_is_said_about_what_is_not_a_readable_shell_script(tmp_path: Path) -> None:
    binary = tmp_path / "tool"
    binary.write_bytes(b"\x7fELF${X:?}")
    assert required_variables(binary) is None
    assert required_variables(tmp_path / "missing.sh") is None


def test_the_runbook_scripts_declare_what_they_act_on() -> None:
    scripts = ROOT / "demo" / "scripts"
    assert set(required_variables(scripts / "router_stop.sh") or {}) == {"BEAMLINE_STATE_DIR"}
    assert set(required_variables(scripts / "router_start.sh") or {}) == {
        "BEAMLINE_STATE_DIR",
        "BEAMLINE_NATS_PORT",
        "BEAMLINE_NATS_MONITOR_PORT",
        "BEAMLINE_ROUTER_TCP_PORT",
        "BEAMLINE_ROUTER_HTTP_PORT",
    }
