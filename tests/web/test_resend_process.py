"""Re-sends acknowledged from memory, seen from outside with the real `remediator serve` killed by
SIGKILL: what a 200 from memory promises (the occurrence was committed before) and what a 200 for
a changed re-send promises (the change is committed)."""

from __future__ import annotations

import json
import sqlite3
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.flow import alert_body
from support.service_proc import ServiceProcess


@pytest.fixture
def service(tmp_path: Path) -> Iterator[ServiceProcess]:
    proc = ServiceProcess(workdir=tmp_path, config={})
    proc.start()
    yield proc
    proc.stop()


def post(service: ServiceProcess, body: dict[str, Any]) -> int | None:
    """Posts, requires a 200, returns its notification id (None: acknowledged from memory)."""
    request = urllib.request.Request(
        f"{service.url}/hooks/alertmanager",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
        notification_id: int | None = json.loads(response.read())["notification_id"]
        return notification_id


def stored(db: Path) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT fingerprint, status, annotations, receive_count FROM occurrences").fetchall()


def test_a_re_send_acknowledged_from_memory_is_in_the_store_after_a_crash(service: ServiceProcess) -> None:
    assert post(service, alert_body("ad01")) is not None
    assert post(service, alert_body("ad01")) is None
    service.kill()  # right after the 200 from memory, before its delivery is written
    [(fingerprint, status, _, receive_count)] = stored(service.db_path)
    # the occurrence was committed before the 200; its delivery count may lose what was waiting
    assert (fingerprint, status) == ("ad01", "firing") and receive_count in (1, 2)
    service.start()
    # the memory starts empty: the first re-send after the restart is committed, then remembered
    assert post(service, alert_body("ad01")) is not None
    assert post(service, alert_body("ad01")) is None


def test_a_changed_re_send_is_committed_before_its_200(service: ServiceProcess) -> None:
    assert post(service, alert_body("ae01")) is not None
    assert post(service, alert_body("ae01")) is None
    changed = alert_body("ae01")
    changed["alerts"][0]["annotations"]["summary"] = "still down after a minute"
    assert post(service, changed) is not None
    service.kill()
    [(_, status, annotations, receive_count)] = stored(service.db_path)
    # the change, and the re-send waiting before it (written in the same commit)
    assert (status, json.loads(annotations)["summary"], receive_count) == ("firing", "still down after a minute", 3)
    service.start()
    assert post(service, changed) is not None  # committed: the memory started empty
    assert post(service, changed) is None
    assert post(service, alert_body("ae01", "resolved")) is not None
    service.kill()
    assert stored(service.db_path)[0][1] == "resolved"
