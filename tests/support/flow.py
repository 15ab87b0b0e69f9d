"""Helpers for tests of the whole flow: temp rules/playbooks, polling the API with a deadline."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

FIXTURES = Path(__file__).parent.parent / "fixtures" / "alertmanager"
FIRING = json.loads((FIXTURES / "firing-nats-jetstream-unhealthy.json").read_text())
RESOLVED = json.loads((FIXTURES / "resolved-nats-jetstream-unhealthy.json").read_text())


def write_config(root: Path, rules: str, playbooks: dict[str, str]) -> dict[str, Any]:
    """Rules and playbooks into root/rules and root/playbooks; returns the settings that load them."""
    (root / "rules").mkdir(parents=True, exist_ok=True)
    (root / "playbooks").mkdir(parents=True, exist_ok=True)
    (root / "rules" / "rules.yaml").write_text(rules)
    for name, text in playbooks.items():
        (root / "playbooks" / f"{name}.yaml").write_text(text)
    return {
        "rules": [str(root / "rules" / "*.yaml")],
        "playbooks": [str(root / "playbooks" / "*.yaml")],
        "store": {"path": str(root / "remediator.db")},
        "base_dir": str(root),
    }


def alert_body(fingerprint: str = "16ff7ec28276970a", status: str = "firing", **labels: str) -> dict[str, Any]:
    body = json.loads(json.dumps(RESOLVED if status == "resolved" else FIRING))
    body["alerts"][0]["fingerprint"] = fingerprint
    body["alerts"][0]["labels"].update(labels)
    return body


async def poll(check: Callable[[], Awaitable[T | None]], timeout: float = 20.0, every: float = 0.05) -> T:
    """The first truthy result of `check`, polled until `timeout`; AssertionError after."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(every)
    raise AssertionError(f"condition not met within {timeout}s (last: {last!r})")


# A playbook that does nothing but succeed, and a rule for the captured alert with the given budget:
# for tests about what happens around a run (admission, pauses), not the run itself.
QUICK_PLAYBOOK = """
name: quick
params:
  node: {type: str}
steps:
  - type: exec
    argv: ["true"]
"""


def quick_rules(max_runs: int) -> str:
    return f"""
rules:
  - name: quick-fix
    match: ['alertname="NatsJetStreamUnhealthy"']
    playbook: quick
    params: {{node: "{{{{ labels.instance }}}}"}}
    limits: {{cooldown: 0, max_runs: {max_runs}, window: 1h, concurrency: parallel}}
"""
