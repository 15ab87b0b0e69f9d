"""Process groups: every `exec` step runs its program in a session of its own, so the whole group it
started can be signalled, on a timeout or a cancel, and after a crash of the service (a group whose
step was running is ended before its run is resumed: service.flow.recovery).

A group is told apart from a later one that reused its number by the boot it was started in and
its leader's start time (/proc); while any member is alive the kernel does not reuse its id.
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

TERM_GRACE_S = 2.0  # after SIGTERM to the group, before SIGKILL
_GROUP_POLL_S = 0.05
_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def signal_group(pgid: int, sig: int) -> bool:
    """Signal every process of the group (0: just probe it); False when the group no longer exists."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    return True


async def end_group(pgid: int) -> str | None:
    """SIGTERM the whole group, give it TERM_GRACE_S to go, then SIGKILL what is left.

    Returns the last signal that was needed (None: the group was already gone). The group is polled
    (not just the leader) because a grandchild that ignores SIGTERM outlives a leader that obeys it.
    """
    if not signal_group(pgid, signal.SIGTERM):
        return None
    # No event tells when a process group empties, so probe it, bounded by the grace period.
    for _ in range(round(TERM_GRACE_S / _GROUP_POLL_S)):
        if not signal_group(pgid, 0):
            return "SIGTERM"
        await asyncio.sleep(_GROUP_POLL_S)
    return "SIGKILL" if signal_group(pgid, signal.SIGKILL) else "SIGTERM"


def boot_id() -> str:
    try:
        return _BOOT_ID.read_text().strip()
    except OSError:
        return ""


def leader_start(pid: int) -> str:
    """The leader's start time in clock ticks since boot ("" once it has exited)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[1].split()[19]  # field 22; the name in parentheses may hold spaces


def still_ours(pgid: int, recorded_boot: str, recorded_start: str) -> bool:
    """Whether the group recorded as (pgid, boot, leader start) may still have members alive: same
    boot, and its leader is either the same process or gone with members left behind."""
    if recorded_boot != boot_id() or not signal_group(pgid, 0):
        return False
    start = leader_start(pgid)
    return start in ("", recorded_start)
