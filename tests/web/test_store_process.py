"""The store's promises seen from outside: a second `remediator serve` on the same store is refused,
and a store file deleted under a running service makes the webhook answer 503, not 200."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.service_proc import ServiceProcess

FIRING = (Path(__file__).parent.parent / "fixtures/alertmanager/firing-nats-jetstream-unhealthy.json").read_bytes()


@pytest.fixture
def service(tmp_path: Path) -> Iterator[ServiceProcess]:
    proc = ServiceProcess(tmp_path, {})
    proc.start()
    yield proc
    proc.stop()


def _status(url: str, body: bytes | None = None) -> int:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_a_second_serve_on_the_same_store_exits_naming_the_owner(service: ServiceProcess) -> None:
    assert service.proc is not None
    second = subprocess.run(
        [sys.executable, "-m", "service.cli", "serve", "--config", str(service.workdir / "remediator.yaml")],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=service.workdir,
    )
    assert second.returncode == 1, second.stderr
    assert f"store {service.db_path} is owned by remediator pid {service.proc.pid} on " in second.stderr
    assert "Traceback" not in second.stderr
    # the owner goes on as before
    assert _status(f"{service.url}/hooks/alertmanager", FIRING) == 200
    assert _status(f"{service.url}/-/ready") == 200


def test_a_deleted_store_file_answers_503_and_is_not_ready(service: ServiceProcess) -> None:
    assert _status(f"{service.url}/hooks/alertmanager", FIRING) == 200
    for suffix in ("", "-wal", "-shm"):
        Path(f"{service.db_path}{suffix}").unlink(missing_ok=True)
    body = json.loads(FIRING)
    body["alerts"][0]["fingerprint"] = "aaaa000000000002"
    assert _status(f"{service.url}/hooks/alertmanager", json.dumps(body).encode()) == 503
    # a re-send of the occurrence committed before: the memory knows it, but a 200 would promise it is stored
    assert _status(f"{service.url}/hooks/alertmanager", FIRING) == 503
    assert _status(f"{service.url}/-/ready") == 503
    assert _status(f"{service.url}/-/healthy") == 200
