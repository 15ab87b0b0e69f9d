"""The HTML pages with a large store: index and detail latency beside GET /-/healthy, same run.

    .venv/bin/python bench/pages.py [--executions 100000] [--requests 300]

The store is filled through ``SQLiteStore.write`` (batched transactions of plain INSERTs): every
execution has three steps and five timeline events (a state change, three verification polls with
PromQL samples, an escalation), one occurrence per ten executions, over 20 rules, 200 targets and 12
alert names, a minute apart. Then one aiohttp client (loopback, in process) requests each page in
turn; the baseline is GET /-/healthy, which does no work, so the ratio is what a page costs beyond
the HTTP round trip on this machine right now.

Pages: the index unfiltered, the index filtered by rule and state, the index filtered by target,
its last page (a large offset) and the detail page of an execution in the middle of the store.
Target: each page under 100 ms median.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aiohttp import ClientSession
from aiohttp.test_utils import TestServer

from service.settings import Secrets, Settings
from service.store.engine import SQLiteEngine
from service.times import timestamp
from service.web.app import RUNTIME, create_app

BATCH = 5000
RULES, TARGETS, ALERTNAMES = 20, 200, 12
STATES = ("succeeded",) * 6 + ("escalated", "escalated", "refused", "failed")
PLAYBOOK = 'name: bench\nrunbook: "T-OPS-04 bench"\nsteps:\n  - {type: exec, argv: ["true"]}\n'
OUTPUT = "".join(f"line {n}: consumer router-in pending {1000 - n}\n" for n in range(12))
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def settings(root: Path) -> Settings:
    (root / "rules").mkdir()
    (root / "playbooks").mkdir()
    rules = "rules:\n" + "".join(
        f"  - {{name: rule-{n}, match: ['alertname=\"Alert{n % ALERTNAMES}\"'], playbook: bench}}\n"
        for n in range(RULES)
    )
    (root / "rules" / "rules.yaml").write_text(rules)
    (root / "playbooks" / "bench.yaml").write_text(PLAYBOOK)
    return Settings.model_validate(
        {
            "rules": [str(root / "rules" / "*.yaml")],
            "playbooks": [str(root / "playbooks" / "*.yaml")],
            "store": {"path": str(root / "remediator.db")},
            "base_dir": str(root),
        }
    )


def rows(first: int, count: int) -> dict[str, list[tuple[Any, ...]]]:
    """SQL parameter rows for executions first..first+count-1 and what hangs off them."""
    out: dict[str, list[tuple[Any, ...]]] = {"occurrences": [], "executions": [], "steps": [], "events": []}
    for n in range(first, first + count):
        at = T0 + timedelta(minutes=n)
        created, finished = timestamp(at), timestamp(at + timedelta(seconds=20 + n % 97))
        rule, target, alertname = f"rule-{n % RULES}", f"node-{n % TARGETS}", f"Alert{n % ALERTNAMES}"
        state = STATES[n % len(STATES)]
        occurrence = n // 10 + 1
        labels = {"alertname": alertname, "instance": target, "severity": "critical", "job": "nats"}
        if n % 10 == 0:
            out["occurrences"].append(
                (
                    occurrence,
                    f"{occurrence:016x}",
                    created,
                    alertname,
                    json.dumps(labels),
                    json.dumps({"summary": f"{alertname} on {target}"}),
                    "http://prometheus/graph?g0.expr=up",
                    "firing",
                    created,
                    created,
                )
            )
        execution_id = f"ex-{n:08d}"
        out["executions"].append(
            (
                execution_id,
                created,
                finished,
                rule,
                "v1",
                "bench",
                "v1",
                target,
                occurrence,
                f"{occurrence:016x}",
                alertname,
                "enforce",
                "{}",
                state,
                "" if state == "succeeded" else "verification did not hold",
                None if state == "refused" else created,
                finished,
            )
        )
        for step in range(3):
            out["steps"].append(
                (execution_id, "steps", f"step-{step}", "exec", 1, created, 0.25, 1, "ok", "exited 0", OUTPUT, 0, "{}")
            )
        out["events"].append((execution_id, created, "state", "running", "{}"))
        for poll in range(1, 4):
            samples = [{"labels": {"consumer": "router-in"}, "value": str(1000 - 100 * poll), "timestamp": 0}]
            check = {"check": "backlog", "ok": False, "summary": "1 of 1 fail", "data": {"samples": samples}}
            data = {"poll": poll, "phase": "verify", "held": False, "checks": [check]}
            out["events"].append((execution_id, created, "verify", f"verify poll {poll}", json.dumps(data)))
        escalation = json.dumps({"severity": "critical"})
        out["events"].append((execution_id, finished, "escalation", "verification did not hold", escalation))
    return out


def insert(batch: dict[str, list[tuple[Any, ...]]]) -> Any:
    def job(conn: Any) -> None:
        conn.executemany(
            "INSERT INTO occurrences (id, fingerprint, starts_at, alertname, labels, annotations, generator_url,"
            " status, first_received_at, last_received_at, receive_count) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1)",
            batch["occurrences"],
        )
        conn.executemany(
            "INSERT INTO executions (id, created_at, updated_at, rule, rule_version, playbook, playbook_version,"
            " target, occurrence_id, fingerprint, alertname, mode, params, state, reason, started_at, finished_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            batch["executions"],
        )
        conn.executemany(
            "INSERT INTO execution_steps (execution_id, phase, name, type, attempt, started_at, duration_s, ok,"
            " status, summary, output, exit_code, data) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            batch["steps"],
        )
        conn.executemany(
            "INSERT INTO execution_events (execution_id, at, kind, message, data) VALUES (?, ?, ?, ?, ?)",
            batch["events"],
        )

    return job


async def measure(session: ClientSession, url: str, requests: int) -> list[float]:
    times = []
    for _ in range(requests):
        started = time.perf_counter()
        async with session.get(url) as response:
            await response.read()
            assert response.status == 200, (url, response.status)
        times.append(time.perf_counter() - started)
    return times


async def main(executions: int, requests: int) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-pages-") as tmp:
        root = Path(tmp)
        app = create_app(settings(root), Secrets(None, None, None))
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        try:
            store = app[RUNTIME].store
            assert isinstance(store, SQLiteEngine)  # filled with raw rows, through the SQLite store's own writes
            started = time.perf_counter()
            for first in range(0, executions, BATCH):
                await store.write(insert(rows(first, min(BATCH, executions - first))))
            fill = time.perf_counter() - started
            size = sum(p.stat().st_size for p in root.glob("remediator.db*"))
            print(f"store: {executions} executions filled in {fill:.1f} s; {size / 1e6:.1f} MB ({store.path.name}*)")
            middle = f"ex-{executions // 2:08d}"
            pages = {
                "baseline GET /-/healthy": "/-/healthy",
                "index": "/",
                "index ?rule&state": "/?rule=rule-7&state=escalated",
                "index ?target": "/?target=node-42",
                "index last page": f"/?offset={executions - 50}",
                "detail": f"/executions/{middle}",
            }
            async with ClientSession(str(server.make_url(""))) as session:
                for path in pages.values():  # warm-up: connection, templates, page cache
                    await measure(session, path, 5)
                results = {name: await measure(session, path, requests) for name, path in pages.items()}
        finally:
            await server.close()
    base = statistics.median(results["baseline GET /-/healthy"])
    print(f"{'request':26} {'median ms':>10} {'p95 ms':>8} {'x baseline':>11}")
    for name, times in results.items():
        median = statistics.median(times)
        p95 = statistics.quantiles(times, n=20)[-1]
        print(f"{name:26} {median * 1000:10.2f} {p95 * 1000:8.2f} {median / base:11.1f}")
    worst = max(statistics.median(t) for name, t in results.items() if not name.startswith("baseline"))
    print(f"slowest page median {worst * 1000:.1f} ms: {'within' if worst < 0.1 else 'OVER'} the 100 ms target")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--executions", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=300)
    args = parser.parse_args()
    asyncio.run(main(args.executions, args.requests))
