"""Intake throughput and latency: the real receiver (durable commit) against a bare aiohttp ceiling.

Each server runs in turn on core 0 under the same wrk load on core 1 (Lua POST script, 16 connections):
the bare handler, the receiver with synchronous=full (the default: every commit fsynced) and with
synchronous=normal. A round runs all three; rounds repeat them, interleaved, because shared hosts
drift by 10-20% within a minute and a drift between two back-to-back runs would show as a ratio.
Prints requests/s, p50, p99 and the server's CPU time per request for every run, each run's ratio
to the bare run of its round, and the median ratio (CPU per request drifts least: it does not count
time the host gave to others).

    .venv/bin/python bench/intake.py [--rounds 3] [--duration 10] [--connections 16]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests/fixtures/alertmanager/firing-nats-jetstream-unhealthy.json"
UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


@dataclass(frozen=True)
class Result:
    name: str
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    requests: int
    cpu_us_per_request: float = 0.0


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pinned(core: int, argv: list[str]) -> list[str]:
    return ["taskset", "-c", str(core), *argv] if shutil.which("taskset") and (os.cpu_count() or 1) > 1 else argv


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"{url} not ready after {timeout}s")


def latency_ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if match is None:
        raise ValueError(text)
    return float(match[1]) * UNITS[match[2]]


def run_wrk(name: str, url: str, duration: int, connections: int) -> Result:
    out = subprocess.run(
        pinned(
            1,
            [
                "wrk",
                "-t1",
                f"-c{connections}",
                f"-d{duration}s",
                "--latency",
                "-s",
                str(ROOT / "bench/intake_post.lua"),
                url,
            ],
        ),
        capture_output=True,
        text=True,
        timeout=duration + 60,
        env={**os.environ, "BENCH_BODY": FIXTURE.read_text().strip()},
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1])  # type: ignore[index]
    p50 = latency_ms(re.search(r"^\s+50%\s+(\S+)", out, re.M)[1])  # type: ignore[index]
    p99 = latency_ms(re.search(r"^\s+99%\s+(\S+)", out, re.M)[1])  # type: ignore[index]
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    requests = int(re.search(r"(\d+) requests in", out)[1])  # type: ignore[index]
    return Result(name, rps, p50, p99, int(bad[1]) if bad else 0, requests)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc (fields after the command name)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def serve_and_measure(name: str, argv: list[str], env: dict[str, str], port: int, args: argparse.Namespace) -> Result:
    proc = subprocess.Popen(
        pinned(0, argv), env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_ready(f"http://127.0.0.1:{port}/-/ready", proc)
        url = f"http://127.0.0.1:{port}/hooks/alertmanager"
        run_wrk(name, url, 2, args.connections)  # warm-up
        cpu_before = cpu_seconds(proc.pid)
        result = run_wrk(name, url, args.duration, args.connections)
        cpu_us = (cpu_seconds(proc.pid) - cpu_before) * 1e6 / max(result.requests, 1)
        return dataclasses.replace(result, cpu_us_per_request=cpu_us)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def run_round(tmp: Path, number: int, args: argparse.Namespace) -> tuple[Result, list[Result], dict[str, int]]:
    port = free_port()
    bare = serve_and_measure(
        "bare aiohttp (parse only)", [sys.executable, str(ROOT / "bench/bare_server.py"), str(port)], {}, port, args
    )
    results, stored = [], {}
    for synchronous in ("full", "normal"):
        db = tmp / f"bench-{number}-{synchronous}.db"
        port = free_port()
        results.append(
            serve_and_measure(
                f"remediator (synchronous={synchronous})",
                [sys.executable, "-m", "service.cli", "serve"],
                {
                    "REMEDIATOR_LISTEN_PORT": str(port),
                    "REMEDIATOR_STORE__PATH": str(db),
                    "REMEDIATOR_RULES": "",
                    "REMEDIATOR_PLAYBOOKS": "",
                    "REMEDIATOR_LOG_LEVEL": "warning",
                    "REMEDIATOR_STORE__SYNCHRONOUS": synchronous,
                },
                port,
                args,
            )
        )
        with sqlite3.connect(db) as conn:
            stored[synchronous] = conn.execute("SELECT count(*) FROM notifications").fetchone()[0]
        db.unlink()
    return bare, results, stored


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is missing: apt-get install -y wrk")
    print(
        f"{'round':5} {'server':34} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'non-2xx':>8} {'x bare':>7}"
        f" {'cpu us/req':>11}"
    )
    full_ratios, full_p99s, non_2xx = [], [], 0
    with tempfile.TemporaryDirectory(prefix="bench-intake-") as tmp:
        for number in range(1, args.rounds + 1):
            bare, results, stored = run_round(Path(tmp), number, args)
            for r in (bare, *results):
                ratio = r.requests_per_s / bare.requests_per_s
                print(
                    f"{number:5d} {r.name:34} {r.requests_per_s:9.0f} {r.p50_ms:8.2f} {r.p99_ms:8.2f}"
                    f" {r.non_2xx:8d} {ratio:7.2f} {r.cpu_us_per_request:11.0f}",
                    flush=True,
                )
            print(f"{'':5} notifications stored: {stored}", flush=True)
            durable = results[0]
            full_ratios.append(durable.requests_per_s / bare.requests_per_s)
            full_p99s.append(durable.p99_ms)
            non_2xx += durable.non_2xx
    ratio, p99 = statistics.median(full_ratios), statistics.median(full_p99s)
    print(
        f"\ndurable (full) / bare throughput, median of {args.rounds} rounds: {ratio:.2f} (target >= 0.5;"
        f" rounds: {', '.join(f'{r:.2f}' for r in full_ratios)}); median p99 {p99:.1f} ms (target < 25 ms)"
    )
    return 0 if ratio >= 0.5 and p99 < 25 and non_2xx == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
