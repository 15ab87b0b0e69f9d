"""The in-process app client's types: ``app_client(settings, secrets)`` is a fixture in tests/conftest.py."""

from __future__ import annotations

from typing import Any, Protocol

from aiohttp.test_utils import TestClient

from service.settings import Secrets, Settings

Client = TestClient[Any, Any]


class AppClient(Protocol):
    """Builds the app as ``create_app`` does and serves it in process on 127.0.0.1; every client it
    made is closed (store, scheduler, flow) when the test ends. No secrets: every one unset."""

    async def __call__(self, settings: Settings, secrets: Secrets | None = None, **server_kwargs: Any) -> Client: ...
