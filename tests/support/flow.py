"""Helpers for tests of the whole flow: temp rules/playbooks, polling the API with a deadline."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Collection
from pathlib import Path
from typing import Any, TypeVar

from service.web.intake import write_resends as write_resends_now
from service.web.runtime import INTAKE
from support.app_client import Client

T = TypeVar("T")
SETTLED = ("succeeded", "failed", "escalated")

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


async def poll(
    check: Callable[[], Awaitable[T | None]],
    timeout: float = 20.0,
    what: str = "condition",
    every: float = 0.05,
    retry_on: tuple[type[BaseException], ...] = (),
) -> T:
    """The first truthy result of `check`, polled until `timeout`; AssertionError naming `what` after.
    An exception in `retry_on` (a server not answering yet) counts as not yet."""
    deadline = time.monotonic() + timeout
    last: object = None
    for _ in range(int(timeout / every) + 2):
        try:
            result = await check()
        except retry_on as exc:
            last = exc
        else:
            if result:
                return result
            last = result
        if time.monotonic() >= deadline:
            break
        await asyncio.sleep(every)  # the interval between two probes, bounded by the deadline
    raise AssertionError(f"{what} not met within {timeout}s (last: {last!r})")


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


async def executions(client: Client) -> list[dict[str, Any]]:
    """The API's list of executions, newest first."""
    return (await (await client.get("/api/v1/executions")).json())["executions"]  # type: ignore[no-any-return]


async def finished(client: Client, execution_id: str, states: Collection[str]) -> dict[str, Any] | None:
    """The execution's report once it is in one of `states` (for `poll`)."""
    report = await (await client.get(f"/api/v1/executions/{execution_id}")).json()
    return report if report["execution"]["state"] in states else None


async def newest_finished(client: Client, states: Collection[str] = SETTLED) -> dict[str, Any] | None:
    """The newest execution's report once it is in one of `states` (for `poll`)."""
    rows = await executions(client)
    return None if not rows else await finished(client, rows[0]["id"], states)


async def write_resends(client: Client) -> None:
    """What the service does every second: write the deliveries acknowledged from memory and hand
    the dispatcher their events (a test calls it where a second would have passed)."""
    await write_resends_now(client.app[INTAKE])
