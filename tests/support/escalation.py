"""Helpers for escalation and approval tests: a webhook receiver we can stop and start, an app factory."""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from service.settings import Secrets, Settings
from service.store import SQLiteStore
from service.web.runtime import RUNTIME
from support.app_client import AppClient, Client
from support.flow import poll, write_config
from support.realprocs import free_port

OPERATOR_TOKEN = "op-secret-token"
PY = sys.executable

RULES = """
rules:
  - name: jetstream
    match: ['alertname="NatsJetStreamUnhealthy"']
    status: firing
    playbook: {playbook}
    severity: page
    limits: {{cooldown: 0, max_runs: 100, window: 1h, concurrency: parallel}}
"""

FAILING = f"""
name: fails-verification
description: runs one step, then verification never holds
steps:
  - name: poke
    type: exec
    argv: ["{PY}", "-c", "print('poked')"]
verify:
  interval: 0.1
  within: 0.3
  checks:
    - name: never-holds
      type: exec
      argv: ["{PY}", "-c", "import sys; sys.exit(1)"]
"""


class Receiver:
    """An HTTP endpoint on a fixed loopback port that records what is POSTed; stop() refuses connections."""

    def __init__(self) -> None:
        self.port = free_port()
        self.bodies: list[tuple[str, dict[str, Any]]] = []  # (path, JSON body)
        self._runner: web.AppRunner | None = None

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/{path:.*}", self._record)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _record(self, request: web.Request) -> web.Response:
        self.bodies.append((request.path, json.loads(await request.read())))
        return web.Response(text="ok")

    def at(self, path: str) -> list[dict[str, Any]]:
        return [body for p, body in self.bodies if p == path]


@pytest.fixture(name="receiver")
async def receiver_fixture() -> AsyncIterator[Receiver]:
    rx = Receiver()
    yield rx
    await rx.stop()


AppFactory = Callable[..., Awaitable[Client]]


def settings_for(root: Path, playbook_name: str, playbook: str, escalation: dict[str, Any]) -> Settings:
    config = write_config(root, RULES.format(playbook=playbook_name), {playbook_name: playbook})
    return Settings.model_validate({**config, "escalation": escalation})


@pytest.fixture(name="apps")
def apps_fixture(app_client: AppClient) -> AppFactory:
    """apps(settings) starts the service in process (app_client); every one still open is closed at the end."""

    async def make(settings: Settings) -> Client:
        return await app_client(settings, Secrets(None, None, OPERATOR_TOKEN))

    return make


def store(client: Client) -> SQLiteStore:
    return client.app[RUNTIME].store


def auth(token: str = OPERATOR_TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def only_execution(client: Client) -> dict[str, Any]:
    async def listed() -> list[dict[str, Any]] | None:
        rows: list[dict[str, Any]] = (await (await client.get("/api/v1/executions")).json())["executions"]
        return rows or None

    [run] = await poll(listed)
    return run


async def state_is(client: Client, execution_id: str, *states: str) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        report: dict[str, Any] = await (await client.get(f"/api/v1/executions/{execution_id}")).json()
        return report if report["execution"]["state"] in states else None

    return await poll(check)
