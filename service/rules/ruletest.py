"""``remediator test``: rule unit tests, in the spirit of ``promtool test rules``.

A test file lists alerts and what the rules should decide for each (format in docs/rules.md)::

    tests:
      - name: JetStream unhealthy on a prod node restarts NATS
        alert:
          labels: {alertname: NatsJetStreamUnhealthy, instance: "n1:8222", severity: critical}
        expect:
          - rule: nats-jetstream-unhealthy
            playbook: nats-restart
            params: {instance: "n1:8222"}
            target: "n1:8222"
      - name: dev is left alone
        alert: {labels: {alertname: NatsDown, env: dev}}
        no_match: true

Only the fields written in an expectation are compared (``rule`` always), so a test pins what it
cares about. A failure prints a unified diff of expected against actual decisions.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, Self

import yaml
from pydantic import Field, ValidationError, model_validator

from service.alerts.webhook import AlertStatus
from service.models import StrictModel
from service.playbooks.params import ParamValue
from service.rules.ruleset import Alert, NotificationContext, RuleMatch, RuleSet
from service.yamlload import ConfigErrors, load_yaml_file, validation_errors


class TestAlert(StrictModel):
    labels: dict[str, str]
    annotations: dict[str, str] = Field(default_factory=dict)
    status: AlertStatus = "firing"
    fingerprint: str = Field(default="", description="default: computed from the labels like Alertmanager")
    starts_at: datetime | None = None
    generator_url: str = ""


class Expectation(StrictModel):
    rule: str
    playbook: str | None = None
    params: dict[str, ParamValue] | None = None
    target: str | None = None
    mode: Literal["enforce", "shadow"] | None = None
    error: str | None = Field(default=None, description="expect this render/param error (substring)")


class TestCase(StrictModel):
    name: str
    alert: TestAlert
    external_url: str = ""
    receiver: str = ""
    common_labels: dict[str, str] = Field(default_factory=dict)
    common_annotations: dict[str, str] = Field(default_factory=dict)
    group_labels: dict[str, str] = Field(default_factory=dict)
    expect: list[Expectation] = Field(default_factory=list)
    no_match: bool = False

    @model_validator(mode="after")
    def _one_expectation(self) -> Self:
        if self.no_match == bool(self.expect):
            raise ValueError("give either expect (a non-empty list) or no_match: true")
        return self


class TestFile(StrictModel):
    tests: list[TestCase] = Field(min_length=1)


def run_rule_tests(files: Sequence[Path], ruleset: RuleSet) -> tuple[bool, str]:
    """Run every test in ``files`` against ``ruleset``.

    Returns ``(passed, report)``: ``passed`` is False if any test failed or any file is invalid;
    ``report`` is readable text (one line per test, a diff under each failure, a summary).
    """
    lines: list[str] = []
    total = failed = 0
    for path in files:
        lines.append(str(path))
        try:
            doc = load_yaml_file(path)
            suite = TestFile.model_validate(doc.data)
        except ConfigErrors as exc:
            lines += [f"  ERROR {e}" for e in exc.errors]
            failed += 1
            continue
        except ValidationError as exc:
            lines += [f"  ERROR {e}" for e in validation_errors(exc, doc, model=TestFile)]
            failed += 1
            continue
        for index, case in enumerate(suite.tests):
            total += 1
            diff = _run_case(case, ruleset)
            if diff is None:
                lines.append(f"  ok    {case.name}")
            else:
                failed += 1
                lines.append(f"  FAIL  {case.name} ({path}:{doc.line_of(('tests', index))})")
                lines += [f"        {d}" for d in diff]
    count = f"{total} test" + ("" if total == 1 else "s")
    lines.append(f"{count}, {failed} failed" if failed else f"{count}, all passed")
    return failed == 0, "\n".join(lines) + "\n"


def _run_case(case: TestCase, ruleset: RuleSet) -> list[str] | None:
    alert = Alert(
        labels=case.alert.labels,
        annotations=case.alert.annotations,
        status=case.alert.status,
        fingerprint=case.alert.fingerprint,
        starts_at=case.alert.starts_at,
        generator_url=case.alert.generator_url,
    )
    context = NotificationContext(
        external_url=case.external_url,
        receiver=case.receiver,
        common_labels=case.common_labels,
        common_annotations=case.common_annotations,
        group_labels=case.group_labels,
    )
    actual = ruleset.match(alert, context)
    expected = [_expected_view(e) for e in case.expect]
    got = [_actual_view(m, case.expect[i] if i < len(case.expect) else None) for i, m in enumerate(actual)]
    if _same(expected, got):
        return None
    want_text = _dump(expected) if expected else "no match\n"
    got_text = _dump(got) if got else "no match\n"
    return [
        line.rstrip("\n")
        for line in difflib.unified_diff(
            want_text.splitlines(keepends=True), got_text.splitlines(keepends=True), "expected", "got", n=3
        )
    ]


def _expected_view(expect: Expectation) -> dict[str, Any]:
    return {k: v for k, v in expect.model_dump().items() if v is not None}


def _actual_view(match: RuleMatch, expect: Expectation | None) -> dict[str, Any]:
    full: dict[str, Any] = {
        "rule": match.rule.name,
        "playbook": match.playbook,
        "params": dict(match.params),
        "target": match.target,
        "mode": match.mode,
    }
    if match.error is not None:
        full["error"] = match.error
    if expect is None:  # an unexpected extra match: show all of it
        return full
    wanted = set(_expected_view(expect)) | {"rule"}
    return {k: v for k, v in full.items() if k in wanted or k == "error"}


def _same(expected: list[dict[str, Any]], got: list[dict[str, Any]]) -> bool:
    if len(expected) != len(got):
        return False
    for want, have in zip(expected, got, strict=True):
        if want.keys() != have.keys():
            return False
        for key, value in want.items():
            if key == "error":
                if value not in have[key]:
                    return False
            elif have[key] != value:
                return False
    return True


def _dump(views: list[dict[str, Any]]) -> str:
    return yaml.safe_dump(views, sort_keys=False, allow_unicode=True, default_flow_style=False, width=1000)
