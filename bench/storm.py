"""Alert storm: 10,000 alerts over 200 targets posted within about 10 s to a running service.

Reports the intake rate (against the same service with no rules, measured in the same run), the
admission decisions by reason, that the runs started never exceed the configured limits, that every
acknowledged alert is in the store, and the service's resident memory before and after.

    .venv/bin/python bench/storm.py [--alerts 10000] [--targets 200] [--per-notification 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
FIRING = json.loads((ROOT / "tests/fixtures/alertmanager/firing-nats-jetstream-unhealthy.json").read_text())
STORM_LIMIT, STORM_WINDOW, MAX_RUNS = 100, 60, 3

RULES = f"""
rules:
  - name: storm-fix
    match: ['alertname="NatsJetStreamUnhealthy"']
    playbook: quick
    params: {{node: "{{{{ labels.instance }}}}"}}
    limits: {{cooldown: 0, max_runs: {MAX_RUNS}, window: 1h, concurrency: single}}
"""
PLAYBOOK = """
name: quick
params:
  node: {type: str}
steps:
  - type: exec
    argv: ["true"]
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def busiest(times: list[datetime], window: timedelta) -> int:
    """The most admissions in any window (t - W, t]: what the storm guard promises to bound."""
    most, first = 0, 0
    for last, at in enumerate(times):
        while times[first] <= at - window:
            first += 1
        most = max(most, last - first + 1)
    return most


def notification(batch: int, per: int, targets: int) -> bytes:
    body = json.loads(json.dumps(FIRING))
    template = body["alerts"][0]
    body["alerts"] = []
    for k in range(per):
        n = batch * per + k
        alert = json.loads(json.dumps(template))
        alert["fingerprint"] = f"{n:016x}"
        alert["labels"]["instance"] = f"target-{n % targets}"
        body["alerts"].append(alert)
    body["groupKey"] = f"storm-{batch}"
    return json.dumps(body).encode()


def start(workdir: Path, with_rules: bool) -> tuple[subprocess.Popen[bytes], str, Path]:
    port = free_port()
    (workdir / "rules").mkdir(exist_ok=True)
    (workdir / "playbooks").mkdir(exist_ok=True)
    (workdir / "rules/storm.yaml").write_text(RULES if with_rules else "rules: []\n")
    (workdir / "playbooks/quick.yaml").write_text(PLAYBOOK)
    db = workdir / f"storm-{with_rules}.db"
    config = workdir / "remediator.yaml"
    config.write_text(
        f"listen_port: {port}\nstore: {{path: {db}}}\nlog_level: warning\n"
        f"rules: [rules/*.yaml]\nplaybooks: [playbooks/*.yaml]\n"
        f"limits: {{storm_max_admissions: {STORM_LIMIT}, storm_window_seconds: {STORM_WINDOW},"
        f" max_concurrent_executions: 8}}\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "serve", "--config", str(config)],
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/-/ready", timeout=1):
                return proc, url, db
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("service did not become ready")


async def post_all(url: str, bodies: list[bytes], concurrency: int) -> tuple[float, int]:
    acked = 0
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal acked
        while not queue.empty():
            body = queue.get_nowait()
            async with session.post(
                f"{url}/hooks/alertmanager", data=body, headers={"Content-Type": "application/json"}
            ) as r:
                if r.status == 200:
                    acked += 1

    started = time.perf_counter()
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    return time.perf_counter() - started, acked


def wait_dispatched(db: Path, timeout: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        with sqlite3.connect(db) as conn:
            if conn.execute("SELECT count(*) FROM alert_events WHERE dispatched_at IS NULL").fetchone()[0] == 0:
                return time.monotonic() - started
        time.sleep(0.2)
    raise SystemExit(f"alerts still undispatched after {timeout}s")


def measure(with_rules: bool, args: argparse.Namespace) -> dict[str, Any]:
    batches = args.alerts // args.per_notification
    bodies = [notification(b, args.per_notification, args.targets) for b in range(batches)]
    with tempfile.TemporaryDirectory(prefix="bench-storm-") as tmp:
        proc, url, db = start(Path(tmp), with_rules)
        try:
            rss_before = rss_mib(proc.pid)
            seconds, acked = asyncio.run(post_all(url, bodies, args.concurrency))
            dispatch_s = wait_dispatched(db, 120)
            rss_after = rss_mib(proc.pid)
            with sqlite3.connect(db) as conn:
                stored = conn.execute("SELECT count(*) FROM alert_events").fetchone()[0]
                decisions = conn.execute(
                    "SELECT state, coalesce(refusal, ''), count(*) FROM executions GROUP BY 1, 2 ORDER BY 3 DESC"
                ).fetchall()
                per_target = conn.execute(
                    "SELECT max(n) FROM (SELECT count(*) AS n FROM executions WHERE state != 'refused' GROUP BY target)"
                ).fetchone()[0]
                admitted = conn.execute("SELECT count(*) FROM executions WHERE state != 'refused'").fetchone()[0]
                admitted_at = [
                    datetime.fromisoformat(row[0])
                    for row in conn.execute(
                        "SELECT created_at FROM executions WHERE state != 'refused' ORDER BY created_at"
                    )
                ]
            busiest_window = busiest(admitted_at, timedelta(seconds=STORM_WINDOW))
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    return {
        "seconds": seconds,
        "acked": acked,
        "alerts_stored": stored,
        "expected_alerts": acked * args.per_notification,
        "decisions": decisions,
        "max_runs_per_target": per_target or 0,
        "admitted": admitted,
        "busiest_window": busiest_window,
        "dispatch_s": dispatch_s,
        "rss_before": rss_before,
        "rss_after": rss_after,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--alerts", type=int, default=10_000)
    parser.add_argument("--targets", type=int, default=200)
    parser.add_argument("--per-notification", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    os.chdir(ROOT)
    baseline = measure(False, args)
    storm = measure(True, args)
    for name, r in (("no rules (baseline)", baseline), ("storm rules", storm)):
        rate = r["acked"] * args.per_notification / r["seconds"]
        print(
            f"{name:20} {rate:8.0f} alerts/s intake, {r['seconds']:.2f}s to post, "
            f"dispatch drained {r['dispatch_s']:.1f}s after, RSS {r['rss_before']:.0f} -> {r['rss_after']:.0f} MiB"
        )
    ratio = baseline["seconds"] / storm["seconds"]
    print(f"\nintake rate with rules / without: {ratio:.2f}")
    print("decisions (state, refusal, count):")
    for state, refusal, count in storm["decisions"]:
        print(f"  {state:10} {refusal or '-':14} {count}")
    checks = {
        "every acknowledged alert is stored": storm["alerts_stored"] == storm["expected_alerts"],
        f"runs admitted in any {STORM_WINDOW}s <= storm limit {STORM_LIMIT} (busiest: {storm['busiest_window']},"
        f" all: {storm['admitted']})": storm["busiest_window"] <= STORM_LIMIT,
        f"runs per target <= max_runs {MAX_RUNS}": storm["max_runs_per_target"] <= MAX_RUNS,
    }
    for what, ok in checks.items():
        print(f"{'ok  ' if ok else 'FAIL'} {what}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
