"""Who is this process, and is the process that left a mark still alive?

Runs and trials record the host, pid and creation time of the process that owns them, so that
one left RUNNING by a process killed with SIGKILL can later be recognised as dead (a reused pid
has another creation time). Process facts come from ``psutil`` (Linux, macOS, Windows).

Marks written before psutil was used hold ``start``, the Linux start time in clock ticks since
boot; :func:`alive` still reads them.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from typing import Any

import psutil

CREATED_TOLERANCE_S = 0.05
"""Two creation times this close are the same process (they are derived from clock ticks)."""


def process_created(pid: int) -> float | None:
    """When process ``pid`` was created (seconds since the epoch); None if unknown or gone."""
    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def identity() -> dict[str, Any]:
    """This process: host, pid and creation time."""
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "created": process_created(pid)}


def on_this_host(mark: Mapping[str, Any]) -> bool:
    return mark.get("host") == socket.gethostname()


def _ticks_since_boot(created: float) -> float:
    """A creation time as Linux clock ticks since boot, the unit of the old ``start`` field."""
    ticks_per_s = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    return (created - psutil.boot_time()) * ticks_per_s


def alive(mark: Mapping[str, Any]) -> bool:
    """Whether the process described by ``mark`` (same host) still runs: its pid exists and, when
    the mark says when it was created, that process is the one created then."""
    pid = int(mark.get("pid", -1))
    if pid <= 0 or not psutil.pid_exists(pid):
        return False
    try:
        created = psutil.Process(pid).create_time()
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:  # it exists, but is not ours to inspect
        return True
    if mark.get("created") is not None:
        return abs(float(mark["created"]) - created) <= CREATED_TOLERANCE_S
    if mark.get("start") is not None:
        return abs(float(mark["start"]) - _ticks_since_boot(created)) <= 1.5
    return True
