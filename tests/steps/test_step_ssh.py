"""The ssh step against real OpenSSH servers (tests/support/sshd.py): argv reaches the remote program
literally, env and cwd, exit codes, bounded output, a timeout that kills the remote process group,
strict host keys, and a distinct reason for each way a host cannot be reached, with no retry storm."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from support.flow import poll
from support.sshd import SshHosts, write_key

from demo.processes import LOOPBACK, free_port, pid_alive
from service.inventory import Host, Inventory, load_inventory
from service.steps import StepContext
from service.steps import ssh as ssh_step
from service.steps.ssh_connections import SshConnections, SshOptions

# Each argv element as the remote program received it, as JSON, into the file named by argv[1].
RECORD_ARGV = "import json, sys; open(sys.argv[1], 'w').write(json.dumps(sys.argv[2:]))"
HOSTILE = [
    "$(touch {marker})",
    "`touch {marker}`",
    "x; touch {marker}",
    "a && touch {marker} || touch {marker}",
    "line1\ntouch {marker}\nline3",
    "it's \"quoted\" 'twice'",
    "--flag=1",
    "-rf",
    "",
    "  spaced  ",
    "*",
    "~",
    "$HOME ${{PATH}}",
    "back\\slash",
    "| cat > {marker}",
    "> {marker}",
    "ünïcødé ✓",
]


@pytest.fixture(scope="module")
def hosts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshHosts]:
    ssh_hosts = SshHosts(tmp_path_factory.mktemp("sshd"))
    try:
        ssh_hosts.start("h1", "h2")
        yield ssh_hosts
    finally:
        ssh_hosts.stop_all()


@pytest.fixture(scope="module")
def inventory(hosts: SshHosts) -> Inventory:
    path = hosts.write_inventory(hosts.workdir / "inventory.yaml", groups={"pair": ["h1", "h2"]})
    return load_inventory(path, "inventory.yaml")


@pytest.fixture
async def pool(hosts: SshHosts) -> AsyncIterator[SshConnections]:
    connections = SshConnections(SshOptions(known_hosts=hosts.known_hosts, connect_timeout=5))
    yield connections
    await connections.close()


def context(inventory: Inventory | None, pool: SshConnections | None, *hosts: Host, limit: int = 65536) -> StepContext:
    return StepContext(execution_id="ex-ssh", inventory=inventory, hosts=hosts, ssh=pool, output_limit=limit)


async def gone(*pids: int) -> bool:
    return not any(pid_alive(pid) for pid in pids)


async def started(pid_file: Path) -> bool:
    return pid_file.exists() and bool(pid_file.read_text())


def spec(*argv: str, **fields: object) -> ssh_step.Spec:
    return ssh_step.Spec.model_validate({"type": "ssh", "argv": list(argv), **fields})


async def test_hostile_argv_reaches_the_remote_program_literally(
    inventory: Inventory, pool: SshConnections, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    hostile = [text.format(marker=marker) for text in HOSTILE]
    out = tmp_path / "argv.json"
    outcome = await ssh_step.run(
        spec(sys.executable, "-c", RECORD_ARGV, str(out), *hostile), context(inventory, pool, inventory.hosts["h1"])
    )
    assert outcome.ok, outcome
    assert json.loads(out.read_text()) == hostile
    assert not marker.exists(), "label text became shell syntax on the host"
    assert outcome.data["host"] == {
        "name": "h1",
        "address": LOOPBACK,
        "port": inventory.hosts["h1"].port,
        "user": inventory.hosts["h1"].user,
    }


async def test_env_cwd_exit_codes_and_the_execution_id(
    inventory: Inventory, pool: SshConnections, tmp_path: Path
) -> None:
    script = "import os, sys; print(os.getcwd()); print(repr(os.environ['ODD'])); print(os.environ['REMEDIATOR_EXECUTION_ID']); print(os.environ['PATH']); sys.exit(3)"
    odd = "it's $(touch x)\n`y`; z"
    outcome = await ssh_step.run(
        spec(sys.executable, "-c", script, env={"ODD": odd}, cwd=str(tmp_path), expect_exit=[3]),
        context(inventory, pool, inventory.hosts["h2"]),
    )
    assert outcome.ok and outcome.status == "ok" and outcome.exit_code == 3, outcome
    lines = outcome.output.splitlines()
    assert lines[0] == str(tmp_path)
    assert lines[1] == repr(odd)
    assert lines[2] == "ex-ssh"
    assert lines[3] == "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    assert "on h2 (" in outcome.summary and "exited 3" in outcome.summary

    failed = await ssh_step.run(spec("false"), context(inventory, pool, inventory.hosts["h2"]))
    assert not failed.ok and failed.status == "failed" and failed.exit_code == 1
    assert "exited 1, expected 0" in failed.summary


async def test_output_is_bounded_to_its_tail_and_stderr_is_kept(inventory: Inventory, pool: SshConnections) -> None:
    script = "import sys; sys.stderr.write('to stderr\\n'); sys.stderr.flush(); print('x' * 5000); print('the end')"
    outcome = await ssh_step.run(
        spec(sys.executable, "-c", script), context(inventory, pool, inventory.hosts["h1"], limit=1024)
    )
    assert outcome.ok
    assert outcome.output.startswith("[... ") and outcome.output.endswith("the end\n")
    assert outcome.data["output_bytes"] > 5000
    both = await ssh_step.run(spec(sys.executable, "-c", script), context(inventory, pool, inventory.hosts["h1"]))
    assert both.output.startswith("to stderr\n")


async def test_a_timeout_kills_the_remote_process_group(
    inventory: Inventory, pool: SshConnections, tmp_path: Path
) -> None:
    pids = tmp_path / "pids"
    # a parent and a child that ignores SIGTERM: both must be gone from the host afterwards
    script = (
        "import os, signal, subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)'])\n"
        f"open({str(pids)!r}, 'w').write(f'{{os.getpid()}} {{child.pid}}')\n"
        "time.sleep(60)\n"
    )
    started = time.monotonic()
    outcome = await ssh_step.run(
        spec(sys.executable, "-c", script, timeout=1.5), context(inventory, pool, inventory.hosts["h1"])
    )
    took = time.monotonic() - started
    assert outcome.status == "timeout" and not outcome.ok, outcome
    assert outcome.data["killed_with"] == "SIGKILL"  # the child ignored SIGTERM
    assert "still running after 1.5s: process group killed (SIGKILL)" in outcome.summary
    assert took < 1.5 + 5, took
    parent, child = (int(p) for p in pids.read_text().split())
    await poll(lambda: gone(parent, child), 5.0, "the remote processes to be gone")


async def test_a_cancelled_step_leaves_no_remote_process(
    inventory: Inventory, pool: SshConnections, tmp_path: Path
) -> None:
    pid_file = tmp_path / "pid"
    script = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(60)"
    task = asyncio.create_task(
        ssh_step.run(spec(sys.executable, "-c", script, timeout=30), context(inventory, pool, inventory.hosts["h1"]))
    )
    await poll(lambda: started(pid_file), 10.0, "the remote program to start")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await poll(lambda: gone(int(pid_file.read_text())), 5.0, "the remote program to be killed")


async def test_connections_are_reused_and_commands_per_host_are_limited(
    hosts: SshHosts, inventory: Inventory, tmp_path: Path
) -> None:
    connections = SshConnections(SshOptions(known_hosts=hosts.known_hosts, max_sessions_per_host=1))
    server = hosts.servers["h2"]
    before = server.connections()
    script = "import sys, time; s = time.time(); time.sleep(0.3); open(sys.argv[1], 'w').write(f'{s} {time.time()}')"
    try:
        ctx = context(inventory, connections, inventory.hosts["h2"])
        outcomes = await asyncio.gather(
            *(ssh_step.run(spec(sys.executable, "-c", script, str(tmp_path / f"run{i}")), ctx) for i in range(3))
        )
    finally:
        await connections.close()
    assert all(o.ok for o in outcomes), outcomes
    assert connections.attempts == 1
    assert server.connections() - before == 1
    spans = sorted(tuple(float(x) for x in (tmp_path / f"run{i}").read_text().split()) for i in range(3))
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert start >= end, f"two commands ran at once on one host: {spans}"


async def test_no_inventory_runs_locally_only_with_fallback_local(tmp_path: Path) -> None:
    out = tmp_path / "local.json"
    local = await ssh_step.run(
        spec(sys.executable, "-c", RECORD_ARGV, str(out), "$(x)", fallback="local"), context(None, None)
    )
    assert local.ok, local
    assert json.loads(out.read_text()) == ["$(x)"]
    refused = await ssh_step.run(spec("true"), context(None, None))
    assert not refused.ok and refused.status == "error"
    assert "no inventory is configured" in refused.summary


async def test_the_host_is_named_or_the_rules_single_host(inventory: Inventory, pool: SshConnections) -> None:
    named = await ssh_step.run(spec("true", host="h2"), context(inventory, pool))
    assert named.ok and named.data["host"]["name"] == "h2"
    unknown = await ssh_step.run(spec("true", host="h9"), context(inventory, pool))
    assert not unknown.ok and 'host "h9" not in the inventory' in unknown.summary
    several = await ssh_step.run(spec("true"), context(inventory, pool, *inventory.resolve("pair")))
    assert not several.ok and "2 hosts (h1, h2)" in several.summary
    none = await ssh_step.run(spec("true"), context(inventory, pool))
    assert not none.ok and "no host to run on" in none.summary


# --- a host that cannot be reached: a distinct reason each, no retry storm -----------------------


def _inventory_with(hosts: SshHosts, tmp_path: Path, **extra_hosts: dict[str, object]) -> Inventory:
    path = hosts.write_inventory(tmp_path / "inventory.yaml", extra_hosts=extra_hosts)
    return load_inventory(path, "inventory.yaml")


async def test_each_unreachable_reason_is_distinct_and_not_retried_at_once(hosts: SshHosts, tmp_path: Path) -> None:
    stranger = tmp_path / "stranger_key"
    write_key(stranger)
    only_h1 = tmp_path / "known_hosts_h1"
    only_h1.write_text(hosts.known_hosts.read_text().splitlines()[0] + "\n")
    inventory = _inventory_with(
        hosts,
        tmp_path,
        refused=hosts.host_vars("h1", ansible_ssh_private_key_file=str(stranger)),
        down={**hosts.host_vars("h1"), "ansible_port": free_port()},
        unknown_key=hosts.host_vars("h2"),
    )
    connections = SshConnections(SshOptions(known_hosts=only_h1, connect_timeout=3, failure_backoff=60))
    server = hosts.servers["h1"]
    try:
        results = {}
        for name in ("refused", "down", "unknown_key"):
            ctx = context(inventory, connections, inventory.hosts[name])
            results[name] = [await ssh_step.run(spec("true"), ctx) for _ in range(3)]
        attempts = connections.attempts
    finally:
        await connections.close()
    kinds = {name: {o.data["ssh_error"] for o in outcomes} for name, outcomes in results.items()}
    assert kinds == {"refused": {"auth_refused"}, "down": {"unreachable"}, "unknown_key": {"host_key_unknown"}}
    assert "login refused for user" in results["refused"][0].summary
    assert "unreachable: Connection refused" in results["down"][0].summary
    assert "host key unknown" in results["unknown_key"][0].summary
    for outcomes in results.values():
        assert all(not o.ok and o.status == "error" for o in outcomes)
        assert all("not tried again for another" in o.summary for o in outcomes[1:])
    assert attempts == 3, "one connection attempt per host, then the backoff answers"
    assert "Connection from" in server.log()


async def test_a_changed_host_key_is_refused_never_accepted(
    hosts: SshHosts, inventory: Inventory, tmp_path: Path
) -> None:
    connections = SshConnections(SshOptions(known_hosts=hosts.known_hosts, failure_backoff=0))
    ctx = context(inventory, connections, inventory.hosts["h2"])
    server = hosts.servers["h2"]
    marker = tmp_path / "ran"
    try:
        assert (await ssh_step.run(spec("true"), ctx)).ok
        await connections.close()
        server.replace_host_key()
        changed = await ssh_step.run(spec("touch", str(marker)), ctx)
    finally:
        await connections.close()
        hosts.write_known_hosts()  # the new key trusted again, for the other tests
    assert not changed.ok and changed.data["ssh_error"] == "host_key_changed", changed
    assert "host key CHANGED" in changed.summary
    assert not marker.exists()


def test_the_remote_command_is_one_quoted_word_per_element(tmp_path: Path) -> None:
    """What the login shell gets: parsed back by sh it is exactly the argv given."""
    argv = [sys.executable, "-c", RECORD_ARGV, str(tmp_path / "a.json"), "$(id)", "a'b", "\n", "--x"]
    command = ssh_step.remote_command(argv, {"V": "$(id) '"}, None)
    result = subprocess.run(
        ["sh", "-c", command], capture_output=True, text=True, timeout=10, check=False, env={"PATH": os.environ["PATH"]}
    )
    assert result.returncode == 0, result
    assert result.stdout.startswith("remediator-pgid ")
    assert json.loads((tmp_path / "a.json").read_text()) == argv[4:]


async def test_the_command_line_with_its_env_values_is_not_logged(
    inventory: Inventory, pool: SshConnections, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG")
    outcome = await ssh_step.run(
        spec("true", env={"TOKEN": "s3cret-value"}), context(inventory, pool, inventory.hosts["h1"])
    )
    assert outcome.ok
    assert "s3cret-value" not in caplog.text


def _sshd_sessions(listener: int) -> list[int]:
    """The sshd processes serving connections of the sshd listening as `listener` (its descendants)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = [], [listener]
    while frontier:
        children = [pid for pid, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return [
        pid for pid in found if Path(f"/proc/{pid}/comm").exists() and "sshd" in Path(f"/proc/{pid}/comm").read_text()
    ]


async def test_a_connection_lost_mid_run_is_said_and_the_next_step_connects_anew(
    hosts: SshHosts, inventory: Inventory, pool: SshConnections, tmp_path: Path
) -> None:
    server = hosts.servers["h2"]
    assert server.pid is not None
    ctx = context(inventory, pool, inventory.hosts["h2"])
    pid_file = tmp_path / "pid"
    script = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(30)"
    task = asyncio.create_task(ssh_step.run(spec(sys.executable, "-c", script, timeout=20), ctx))
    await poll(lambda: started(pid_file), 10.0, "the remote program to start")
    try:
        for pid in _sshd_sessions(server.pid):  # the host's side of the connection dies
            os.kill(pid, signal.SIGKILL)
        lost = await asyncio.wait_for(task, 10)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid_file.read_text()), signal.SIGKILL)
    assert not lost.ok and lost.data["ssh_error"] == "connection_lost", lost
    assert "the connection was lost while it ran" in lost.summary
    again = await ssh_step.run(spec("true"), ctx)
    assert again.ok, again
