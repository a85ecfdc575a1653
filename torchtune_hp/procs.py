"""Trial processes as the study records them, so a resumed driver can make sure none still runs.

A launched trial runs as its own process group led by a small guard
(:mod:`torchtune_hp.executors.guard`) that kills the group when the driver dies. The study
stores the group's ``{host, pid, start}`` (``start``: the kernel's start time of the process, so
a reused pid is never mistaken for it). Before a resumed driver runs anything, every group of a
trial left RUNNING is made sure to be gone.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from typing import Any

KILL_GRACE_S = 5.0


def start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (``/proc/<pid>/stat`` field 22)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode(errors="replace")
    except OSError:
        return None
    try:
        return int(stat.rsplit(")", 1)[1].split()[19])
    except (IndexError, ValueError):
        return None


def record(pid: int) -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": pid, "start": start_ticks(pid)}


def group_alive(rec: dict[str, Any]) -> bool:
    """Whether the recorded group still has a member on this host (its leader, same start)."""
    pid = rec.get("pid")
    if not isinstance(pid, int) or rec.get("host") != socket.gethostname():
        return False
    if rec.get("start") is not None and start_ticks(pid) != rec["start"]:
        return False  # the leader is gone (its pid may be reused by an unrelated process)
    try:
        os.killpg(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def end_group(rec: dict[str, Any], grace_s: float = KILL_GRACE_S) -> None:
    """SIGTERM a recorded trial group that still lives, SIGKILL it after ``grace_s``, and
    return only once it is gone."""
    if not group_alive(rec):
        return
    pid = rec["pid"]
    _signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while group_alive(rec) and time.monotonic() < deadline:
        time.sleep(0.05)
    _signal_group(pid, signal.SIGKILL)
    while _group_exists(pid) and time.monotonic() < deadline + grace_s:
        time.sleep(0.02)


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _group_exists(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True
