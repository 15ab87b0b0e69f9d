"""Intake throughput and latency on Alertmanager's traffic: the real receiver against a bare aiohttp ceiling.

Each server runs in turn on core 0 under the same wrk load on core 1 (bench/intake_post.lua, 16
connections, store.synchronous=full by default). A round measures the receiver on three kinds of
traffic, each with no rules and with the shipped remediator.yaml (its rules and playbooks loaded,
the reconciler on; the Alertmanager, Prometheus and NATS it names point at closed ports here):

- new: every request a new alert occurrence (a storm; the store's worst case);
- resend: the same 100 firing alerts re-sent unchanged (Alertmanager's repeat_interval and group changes);
- mix: 9 re-sends to 1 new or changed alert;

then the floor (bench/floor_server.py: the service's own validation and statements, grouped commits,
bodies seen before answered at once, and nothing else) on new alerts and on the mix: what any
receiver that keeps the promise of a 200 reaches on this host; and last the mix with no rules while
50 executions run `exec` steps of 3 s each (the remediator's own work must not starve the webhook).
--synchronous normal measures all of it without an fsync per commit (what the disk costs), and
--checkout DIR the receiver of another checkout (a git worktree of an older commit) instead.

Shared hosts drift by 10-30% within a minute, and a drift between two runs would show as a ratio:
so each case runs between two runs of the bare handler and its ratio is to their mean; rounds repeat
all of it. Prints requests/s, p50, p99, the server's CPU time per request and the share answered
from memory for every run, each case's ratio, and the medians of the rounds against the targets.

    .venv/bin/python bench/intake.py [--rounds 3] [--duration 10] [--connections 16] [--only TEXT]
                                     [--synchronous full|normal] [--checkout DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests/fixtures/alertmanager/firing-nats-jetstream-unhealthy.json"
UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}
RUNNING = 50  # executions running during the last case
STEP_S, STEPS = 3, 6  # each runs STEPS exec steps of STEP_S: longer than a warm-up and a run

# (name, rules, traffic) of each measured case; the ratio each must reach and its p99 bound
CASES = [
    ("new, no rules", "none", "new"),
    ("resend, no rules", "none", "resend"),
    ("mix, no rules", "none", "mix"),
    ("new, shipped rules", "shipped", "new"),
    ("resend, shipped rules", "shipped", "resend"),
    ("mix, shipped rules", "shipped", "mix"),
    ("floor, new", "floor", "new"),
    ("floor, mix", "floor", "mix"),
    (f"mix, {RUNNING} executions running", "exec", "mix"),
]
TARGETS = {"new, shipped rules": 0.5, "resend, shipped rules": 0.7, "mix, shipped rules": 0.7}
TARGETS[CASES[-1][0]] = 0.4
P99_MS = 25.0

SLOW_RULES = """
rules:
  - name: bench-slow
    match: ['alertname="BenchSlow"']
    playbook: slow
    target: "{{ fingerprint }}"
    limits: {cooldown: 0, max_runs: 1000, window: 1h, concurrency: parallel}
"""


def slow_playbook() -> str:
    sleep = shutil.which("sleep") or "/bin/sleep"
    step = f'  - type: exec\n    argv: ["{sleep}", "{STEP_S}"]\n    timeout: {STEP_S + 10}\n'
    return "name: slow\nsteps:\n" + step * STEPS


@dataclass(frozen=True)
class Result:
    name: str
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    requests: int
    cpu_us_per_request: float = 0.0
    from_memory: float | None = None  # share of 200s answered from memory (None: not counted)
    note: str = ""


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pinned(core: int, argv: list[str]) -> list[str]:
    return ["taskset", "-c", str(core), *argv] if shutil.which("taskset") and (os.cpu_count() or 1) > 1 else argv


def poll(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise SystemExit(f"{what}: not after {timeout}s")


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as response:
        return bytes(response.read())


def ready(url: str, proc: subprocess.Popen[bytes]) -> bool:
    if proc.poll() is not None:
        raise SystemExit(f"server exited with {proc.returncode}")
    try:
        get(url)
    except OSError:
        return False
    return True


def latency_ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if match is None:
        raise ValueError(text)
    return float(match[1]) * UNITS[match[2]]


def run_wrk(name: str, url: str, duration: int, connections: int, traffic: str, seed: int) -> Result:
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
        env={**os.environ, "BENCH_BODY": FIXTURE.read_text().strip(), "BENCH_MODE": traffic, "BENCH_SEED": str(seed)},
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


def metric(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    return float(match[1]) if match else 0.0


@contextmanager
def serving(argv: list[str], env: dict[str, str], port: int, cwd: Path = ROOT) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(
        pinned(0, argv), env={**os.environ, **env}, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        poll(lambda: ready(f"http://127.0.0.1:{port}/-/ready", proc), 30, "the server to be ready")
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def measure(
    name: str, proc: subprocess.Popen[bytes], port: int, traffic: str, seed: int, args: argparse.Namespace
) -> Result:
    url = f"http://127.0.0.1:{port}/hooks/alertmanager"
    run_wrk(name, url, 2, args.connections, traffic, seed)  # warm-up: the re-sent alerts are committed here
    cpu_before = cpu_seconds(proc.pid)
    result = run_wrk(name, url, args.duration, args.connections, traffic, seed + 500_000)
    cpu_us = (cpu_seconds(proc.pid) - cpu_before) * 1e6 / max(result.requests, 1)
    return dataclasses.replace(result, cpu_us_per_request=cpu_us)


def remembered_share(port: int) -> float:
    text = get(f"http://127.0.0.1:{port}/metrics").decode()
    answered = metric(text, 'remediator_webhook_requests_total{code="200"}')
    return metric(text, "remediator_webhook_remembered_notifications_total") / max(answered, 1)


def start_executions(port: int) -> None:
    """RUNNING alerts the slow rule wants, posted before the load; returns once all run."""
    body = json.loads(FIXTURE.read_text())
    for n in range(RUNNING):
        body["alerts"][0]["fingerprint"] = f"{0xB000 + n:016x}"
        body["alerts"][0]["labels"]["alertname"] = "BenchSlow"
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/hooks/alertmanager",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10):
            pass
    poll(lambda: running(port) >= RUNNING, 30, f"{RUNNING} executions to run")


def running(port: int) -> int:
    answer = json.loads(get(f"http://127.0.0.1:{port}/api/v1/executions?state=running&limit=200"))
    return len(answer["executions"])


def serve_case(tmp: Path, number: int, rules: str, traffic: str, name: str, args: argparse.Namespace) -> Result:
    port = free_port()
    store = tmp / f"bench-{number}-{rules}-{traffic}.db"
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens: the shipped config's neighbours are not contacted
    env = {
        "REMEDIATOR_LISTEN_PORT": str(port),
        "REMEDIATOR_STORE__PATH": str(store),
        "REMEDIATOR_STORE__SYNCHRONOUS": args.synchronous,
        "REMEDIATOR_LOG_LEVEL": "warning",
        "REMEDIATOR_ALERTMANAGER_URL": dead,
        "REMEDIATOR_PROMETHEUS_URL": dead,
    }
    argv = [sys.executable, "-m", "service.cli", "serve"]
    checkout = args.checkout or ROOT  # `python -m` imports the service package of its working directory
    if rules == "floor":
        argv = [sys.executable, str(ROOT / "bench/floor_server.py"), str(port), str(store), args.synchronous]
    elif rules == "shipped":
        argv += ["--config", str(checkout / "remediator.yaml")]
    elif rules == "exec":
        (tmp / "rules.yaml").write_text(SLOW_RULES)
        (tmp / "slow.yaml").write_text(slow_playbook())
        env |= {
            "REMEDIATOR_RULES": str(tmp / "rules.yaml"),
            "REMEDIATOR_PLAYBOOKS": str(tmp / "slow.yaml"),
            "REMEDIATOR_LIMITS__MAX_CONCURRENT_EXECUTIONS": str(RUNNING),
            "REMEDIATOR_LIMITS__STORM_MAX_ADMISSIONS": "1000",
        }
    else:
        env |= {"REMEDIATOR_RULES": "", "REMEDIATOR_PLAYBOOKS": ""}
    seed = number * 1_000_000 + 1_000_000 * len(CASES) * 10  # apart from the 100 re-sent fingerprints
    try:
        with serving(argv, env, port, ROOT if rules == "floor" else checkout) as proc:
            if rules == "exec":
                start_executions(port)
            result = measure(name, proc, port, traffic, seed, args)
            note = f"{running(port)} still running" if rules == "exec" else ""
            from_memory = None if rules == "floor" else remembered_share(port)
            return dataclasses.replace(result, from_memory=from_memory, note=note)
    finally:
        # Its store gone and the disk synced before the next run: the kernel writing back this run's
        # dirty pages would otherwise take CPU from whichever run comes next.
        for path in tmp.glob(f"bench-{number}-*"):
            path.unlink()
        os.sync()


def bare(args: argparse.Namespace) -> Result:
    port = free_port()
    with serving([sys.executable, str(ROOT / "bench/bare_server.py"), str(port)], {}, port) as proc:
        return measure("bare aiohttp (parse only)", proc, port, "mix", 0, args)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--only", default="", help="measure only the cases whose name contains this text")
    parser.add_argument(
        "--synchronous", choices=["full", "normal"], default="full", help="store.synchronous of every store measured"
    )
    parser.add_argument(
        "--checkout", type=Path, default=None, help="measure the receiver of this checkout (the floor stays this one's)"
    )
    args = parser.parse_args()
    cases = [case for case in CASES if args.only in case[0]]
    if not cases:
        raise SystemExit(f"no case name contains {args.only!r}: " + ", ".join(name for name, _, _ in CASES))
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is missing: apt-get install -y wrk")
    print(
        f"{'round':5} {'server':34} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'non-2xx':>7} {'x bare':>6}"
        f" {'cpu us/req':>10} {'memory':>6}"
    )
    ratios: dict[str, list[float]] = {name: [] for name, _, _ in cases}
    p99s: dict[str, list[float]] = {name: [] for name, _, _ in cases}
    non_2xx = 0
    with tempfile.TemporaryDirectory(prefix="bench-intake-") as tmp:
        for number in range(1, args.rounds + 1):
            before = bare(args)
            print_row(number, before, None)
            for index, (name, rules, traffic) in enumerate(CASES):
                if (name, rules, traffic) not in cases:
                    continue
                result = serve_case(Path(tmp), number * len(CASES) + index, rules, traffic, name, args)
                after = bare(args)
                # the bare runs just before and just after: the host's drift over the case cancels out
                baseline = (before.requests_per_s + after.requests_per_s) / 2
                print_row(number, result, baseline)
                print_row(number, after, None)
                ratios[name].append(result.requests_per_s / baseline)
                p99s[name].append(result.p99_ms)
                non_2xx += result.non_2xx
                before = after
    print(f"\nmedians of {args.rounds} rounds ({args.connections} connections):")
    met = non_2xx == 0
    for name, _, _ in cases:
        ratio, p99 = statistics.median(ratios[name]), statistics.median(p99s[name])
        target = TARGETS.get(name)
        verdict = ""
        if target is not None:
            ok = ratio >= target and p99 < P99_MS
            met = met and ok
            verdict = f"  target >= {target}x, p99 < {P99_MS:g} ms: {'met' if ok else 'MISSED'}"
        rounds = ", ".join(f"{r:.2f}" for r in ratios[name])
        print(f"  {name:34} {ratio:.2f}x bare (rounds {rounds}), p99 {p99:.1f} ms{verdict}")
    return 0 if met else 1


def print_row(number: int, result: Result, baseline_rps: float | None) -> None:
    """A run; `baseline_rps` is the bare rate its ratio is to (None: a bare run)."""
    ratio = f"{result.requests_per_s / baseline_rps:6.2f}" if baseline_rps else f"{'':6}"
    memory = f"{'':6}" if result.from_memory is None else f"{result.from_memory:6.0%}"
    print(
        f"{number:5d} {result.name:34} {result.requests_per_s:8.0f} {result.p50_ms:7.2f} {result.p99_ms:7.2f}"
        f" {result.non_2xx:7d} {ratio} {result.cpu_us_per_request:10.0f} {memory} {result.note}",
        flush=True,
    )


if __name__ == "__main__":
    sys.exit(main())
