"""Shared pytest fixtures and hooks."""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest
from pytest_aiohttp import AiohttpClient
from support.app_client import AppClient, Client
from support.realprocs import (
    AlertmanagerServer,
    NatsServer,
    PrometheusServer,
    RealProcesses,
    attach_logs,
)

from service.settings import Secrets, Settings
from service.web.app import create_app

# --- the app in process -----------------------------------------------------------------------------


@pytest.fixture
def app_client(aiohttp_client: AiohttpClient) -> AppClient:
    """``await app_client(settings, secrets)``: a client of the app ``create_app`` builds, served in
    process by pytest-aiohttp, which closes it when the test ends (tests/support/app_client.py)."""

    async def start(settings: Settings, secrets: Secrets | None = None, **server_kwargs: Any) -> Client:
        app = create_app(settings, secrets or Secrets(None, None, None))
        return await aiohttp_client(app, server_kwargs=server_kwargs)

    return start


# --- real processes (tests/support/realprocs.py) ---------------------------------------------------------


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    attach_logs(item, report)
    return report


@pytest.fixture
def real_processes(tmp_path: Path) -> Iterator[RealProcesses]:
    """Starts real servers for this test; every one is stopped by PID when it ends, pass or fail."""
    procs = RealProcesses(tmp_path)
    try:
        yield procs
    finally:
        procs.stop_all()


@pytest.fixture(scope="module")
def module_processes(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RealProcesses]:
    """Like ``real_processes`` but shared by a module's tests (a Prometheus takes ~5 s to first scrape)."""
    procs = RealProcesses(tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1]))
    try:
        yield procs
    finally:
        procs.stop_all()


@pytest.fixture
def nats_server(real_processes: RealProcesses) -> NatsServer:
    """A running nats-server with JetStream.

    ``client_url``, ``monitor_url``, ``pid``; ``stop()`` then ``start()`` restarts it on the same ports
    and store dir (blocking: from a test with live servers in its loop, call via ``asyncio.to_thread``).
    """
    return real_processes.nats()


@pytest.fixture
def prometheus_server(real_processes: RealProcesses) -> Callable[..., PrometheusServer]:
    """``prometheus_server(targets={job: [host:port]}, rule_files=[...], alertmanagers=[...])`` starts one."""
    return real_processes.prometheus


@pytest.fixture
def alertmanager_server(real_processes: RealProcesses) -> Callable[[str], AlertmanagerServer]:
    """``alertmanager_server(config_yaml_text)`` starts one."""
    return real_processes.alertmanager
