"""Hostile values reach a real child only as single argv elements or env vars; nothing else runs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from service.steps import StepContext
from service.steps.exec import Spec, run

# The child records exactly what it was given; nothing in it interprets its input.
RECORDER = """
import json, os, sys
seen = {"argv": sys.argv[2:], "env": {k: v for k, v in os.environ.items() if k.startswith(("ALERT_", "X_"))}}
with open(sys.argv[1], "w", encoding="utf-8", errors="surrogateescape") as f:
    json.dump(seen, f)
"""


def hostile(sentinel: Path) -> list[str]:
    touch = f"touch {sentinel}"
    return [
        "; rm -rf /",
        f"; {touch}",
        f"$({touch})",
        f"`{touch}`",
        f"| {touch}",
        f"&& {touch}",
        f"\n{touch}\n",
        f"a\r\n{touch}",
        "${IFS}$(id)",
        "../../../../etc/passwd",
        "..",
        "-rf",
        "--help",
        "'\"\\",
        "* ? [a-z] ~",
        "%s%n%x",
        "",
        "  spaces  around  ",
        "é ☃ 漢字 \u202e",
        "x" * 10240,
        f"{'A' * 5000}$({touch}){'B' * 5000}",
    ]


async def test_hostile_values_arrive_byte_for_byte_and_nothing_else_runs(tmp_path: Path) -> None:
    sentinel = tmp_path / "pwned"
    record = tmp_path / "seen.json"
    values = hostile(sentinel)
    labels = {f"l{i}": v for i, v in enumerate(values)}
    annotations = {"description": values[2], "a;b$(c)": values[1]}
    spec = Spec(
        type="exec",
        argv=[sys.executable, "-c", RECORDER, str(record), *values],
        env={f"X_{i}": v for i, v in enumerate(values)},
        cwd=str(tmp_path),
    )
    out = await run(spec, StepContext(execution_id="ex-inj", labels=labels, annotations=annotations))
    assert out.ok, (out.summary, out.output)

    seen = json.loads(record.read_text(encoding="utf-8"))
    assert seen["argv"] == values  # one element each, in order, unchanged
    for i, value in enumerate(values):
        assert seen["env"][f"X_{i}"] == value
        assert seen["env"][f"ALERT_LABEL_L{i}"] == value
    assert seen["env"]["ALERT_ANNOTATION_DESCRIPTION"] == values[2]
    assert seen["env"]["ALERT_ANNOTATION_A_B__C_"] == values[1]
    assert not sentinel.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seen.json"]


async def test_a_hostile_value_as_the_program_runs_nothing(tmp_path: Path) -> None:
    sentinel = tmp_path / "pwned"
    for program in (f"touch {sentinel}", f"sh -c 'touch {sentinel}'", f"$(touch {sentinel})", ".."):
        out = await run(Spec(type="exec", argv=[program], cwd=str(tmp_path)), StepContext(execution_id="x"))
        assert (out.ok, out.status) == (False, "error"), out.summary
    assert not sentinel.exists()


@pytest.mark.parametrize(("where", "named"), [("argv", "argv[3]"), ("env", "env X")])
async def test_nul_byte_in_a_value_the_playbook_names_is_refused_before_anything_runs(
    tmp_path: Path, where: str, named: str
) -> None:
    sentinel = tmp_path / "ran"
    argv = [sys.executable, "-c", f"open({str(sentinel)!r}, 'w').close()"]
    env: dict[str, str] = {}
    bad = "before\x00after"
    if where == "argv":
        argv.append(bad)
    else:
        env["X"] = bad
    out = await run(Spec(type="exec", argv=argv, env=env), StepContext(execution_id="x"))
    assert (out.ok, out.status) == (False, "error")
    assert out.summary == f"{sys.executable} not started: {named} contains a NUL byte"
    assert not sentinel.exists()


async def test_nul_byte_in_an_alert_label_leaves_that_variable_out_and_the_step_runs(tmp_path: Path) -> None:
    record = tmp_path / "seen.json"
    labels = {"job": "before\x00after", "instance": "node-1"}
    spec = Spec(type="exec", argv=[sys.executable, "-c", RECORDER, str(record)])
    out = await run(spec, StepContext(execution_id="x", labels=labels))
    assert out.ok, out.summary
    assert json.loads(record.read_text())["env"] == {"ALERT_LABEL_INSTANCE": "node-1"}
    assert out.summary.endswith(
        " (1 alert variable left out or cut: ALERT_LABEL_JOB not set: its value contains a NUL byte)"
    )
