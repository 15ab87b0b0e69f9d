"""The real `remediator serve` process: crash safety, concurrency, graceful shutdown, env overrides."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
import yaml
from support.crash import kill_during_second_step
from support.crash import make_service as make_crash_recovery_service
from support.service_proc import ServiceProcess, free_port

FIRING = json.loads(
    (Path(__file__).parent.parent / "fixtures/alertmanager/firing-nats-jetstream-unhealthy.json").read_text()
)
JSON = {"Content-Type": "application/json"}


def body_for(n: int) -> bytes:
    body = json.loads(json.dumps(FIRING))
    body["groupKey"] = f"post-{n}"
    body["alerts"][0]["fingerprint"] = f"{n:016x}"
    return json.dumps(body).encode()


def stored_group_keys(db: Path) -> set[str]:
    with sqlite3.connect(db) as conn:
        return {row[0] for row in conn.execute("SELECT group_key FROM notifications")}


@pytest.fixture
def service(tmp_path: Path) -> Iterator[ServiceProcess]:
    proc = ServiceProcess(workdir=tmp_path, config={})
    yield proc
    proc.stop()


async def test_sigkill_after_acknowledged_posts_loses_none(service: ServiceProcess) -> None:
    service.start()
    acked: list[str] = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        for n in range(150):
            async with session.post(f"{service.url}/hooks/alertmanager", data=body_for(n), headers=JSON) as r:
                assert r.status == 200
                acked.append(f"post-{n}")
    # Killed right after the last 200: no cleanup, no graceful close of the store.
    service.kill()
    service.start()
    assert stored_group_keys(service.db_path) == set(acked)
    assert len(stored_group_keys(service.db_path)) == 150


async def test_sigkill_under_concurrent_load_keeps_every_acknowledged_post(service: ServiceProcess) -> None:
    service.start()
    acked: list[str] = []
    stop = asyncio.Event()

    async def stream(worker: int, session: aiohttp.ClientSession) -> None:
        for n in range(worker * 10_000, worker * 10_000 + 2_000):
            if stop.is_set():
                return
            try:
                async with session.post(f"{service.url}/hooks/alertmanager", data=body_for(n), headers=JSON) as r:
                    if r.status == 200:
                        acked.append(f"post-{n}")
                        if len(acked) >= 300:
                            stop.set()
            except aiohttp.ClientError:
                return  # the server died under us: that request was never acknowledged

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        workers = [asyncio.create_task(stream(w, session)) for w in range(8)]
        await asyncio.wait_for(stop.wait(), timeout=60)
        service.kill()
        await asyncio.wait_for(asyncio.gather(*workers), timeout=20)
    service.start()
    stored = stored_group_keys(service.db_path)
    assert set(acked) <= stored
    # at most the requests in flight at the kill were committed without an answer
    assert len(stored) - len(acked) <= 8


async def test_200_concurrent_posts_store_exactly_200(service: ServiceProcess) -> None:
    service.start()
    connector = aiohttp.TCPConnector(limit=200)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as session:

        async def post(n: int) -> int:
            async with session.post(f"{service.url}/hooks/alertmanager", data=body_for(n), headers=JSON) as r:
                return r.status

        statuses = await asyncio.gather(*(post(n) for n in range(200)))
    assert statuses == [200] * 200
    assert len(stored_group_keys(service.db_path)) == 200
    assert "locked" not in service.logs()


async def test_sigterm_drains_and_closes_the_store(service: ServiceProcess) -> None:
    service.start()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        async with session.post(f"{service.url}/hooks/alertmanager", data=body_for(1), headers=JSON) as r:
            assert r.status == 200
    assert service.terminate() == 0
    lines = [json.loads(line) for line in service.logs().splitlines() if line.startswith("{")]
    assert lines[-1]["msg"] == "store closed"
    # a closed store leaves no WAL behind to replay: the last connection checkpointed it
    assert not (service.db_path.parent / (service.db_path.name + "-wal")).exists()


def test_environment_overrides_the_config_file(tmp_path: Path) -> None:
    # The file says port 1 and no auth; the environment moves the port and turns bearer auth on.
    service = ServiceProcess(workdir=tmp_path, config={"listen_port": 1}, port=free_port())
    service.env = {"REMEDIATOR_LISTEN_PORT": str(service.port), "REMEDIATOR_WEBHOOK_BEARER_TOKEN": "from-env"}
    try:
        service.start()
        request = urllib.request.Request(
            f"{service.url}/hooks/alertmanager", data=body_for(1), headers=JSON, method="POST"
        )
        with pytest.raises(urllib.error.HTTPError) as denied:
            urllib.request.urlopen(request, timeout=5)
        assert denied.value.code == 401
    finally:
        service.stop()


def serve_once(config: Path, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """`remediator serve` expected to fail at start: its exit code and output."""
    return subprocess.run(
        [sys.executable, "-m", "service.cli", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=config.parent,
    )


def assert_one_line_failure(result: subprocess.CompletedProcess[str], says: str) -> None:
    assert result.returncode == 1
    assert "Traceback" not in result.stderr + result.stdout
    last = result.stderr.splitlines()[-1]
    assert last.startswith("remediator: cannot serve: ") and says in last


def test_a_store_refusing_writes_while_recovering_runs_fails_start_up_in_one_line(tmp_path: Path) -> None:
    # A run left `running` by a crash must be marked interrupted at start; the store refuses the write
    # (as a read-only one does: a trigger stands in for the read-only mount tests cannot make portably).
    service = make_crash_recovery_service(tmp_path, idempotent=False)
    try:
        kill_during_second_step(service, "ro", "30")
    finally:
        service.stop()
    with sqlite3.connect(service.db_path) as conn:
        conn.execute(
            "CREATE TRIGGER refuse BEFORE UPDATE ON executions "
            "BEGIN SELECT RAISE(ABORT, 'attempt to write a readonly database'); END"
        )
    result = serve_once(service.workdir / "remediator.yaml")
    assert_one_line_failure(result, "readonly database")


def test_a_store_that_cannot_be_opened_fails_start_up_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "not-a-directory").write_text("")
    config = tmp_path / "remediator.yaml"
    config.write_text("store: {path: not-a-directory/remediator.db}\nrules: []\nplaybooks: []\n")
    assert_one_line_failure(serve_once(config), "not-a-directory")


def warnings_logged(service: ServiceProcess) -> list[str]:
    lines = [json.loads(line) for line in service.logs().splitlines() if line.startswith("{")]
    return [line["msg"] for line in lines if line["level"] == "warning" and line["logger"] == "remediator"]


def test_start_up_warns_when_the_webhook_operator_actions_or_reads_are_open(tmp_path: Path) -> None:
    open_service = ServiceProcess(workdir=tmp_path / "open", config={})
    closed_service = ServiceProcess(
        workdir=tmp_path / "closed",
        config={},
        env={"REMEDIATOR_WEBHOOK_BEARER_TOKEN": "w", "REMEDIATOR_OPERATOR_TOKEN": "o", "REMEDIATOR_READ_TOKEN": "r"},
    )
    for service in (open_service, closed_service):
        service.workdir.mkdir()
        try:
            service.start()
        finally:
            service.stop()
    assert [w.split(":")[0] for w in warnings_logged(open_service)] == [
        "the webhook accepts unauthenticated requests",
        "no operator token",
        "no read token",
    ]
    assert warnings_logged(closed_service) == []


def test_the_shipped_config_starts_in_dry_run_and_says_what_it_would_act_on(tmp_path: Path) -> None:
    """The README's first command must not act on whatever listens on the demo's ports: it starts in
    dry run, and the log names each rule and the hosts and ports its playbook would be given."""
    root = Path(__file__).resolve().parent.parent.parent
    shipped = yaml.safe_load((root / "remediator.yaml").read_text())
    assert shipped["dry_run"] is True
    where = ("listen_port", "external_url", "store")  # this test's own (ServiceProcess), not 9095
    config = {
        **{key: value for key, value in shipped.items() if key not in where},
        "rules": [str(root / "rules" / "*.yaml")],
        "playbooks": [str(root / "playbooks" / "*.yaml")],
        "reconcile": {"enabled": False},  # no Alertmanager here
    }
    service = ServiceProcess(workdir=tmp_path, config=config)
    try:
        service.start()
    finally:
        service.stop()
    lines = [json.loads(line) for line in service.logs().splitlines() if line.startswith("{")]
    [serving] = [line for line in lines if line["msg"] == "serving"]
    assert serving["mode"] == "dry-run"
    loaded = {line["rule"]: line for line in lines if line["msg"] == "rule loaded"}
    nats = loaded["nats-process-down"]
    assert (nats["playbook"], nats["mode"]) == ("nats-process-down", "dry-run")
    assert nats["acts_on"]["nats_port"] == 4222 and nats["acts_on"]["state_dir"] == "/tmp/beamline-demo"
    assert any(w.startswith("dry run: ") and "no playbook runs" in w for w in warnings_logged(service))
