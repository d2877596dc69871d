"""Who is this process, and is the process that left a mark still alive?

Runs and trials record the host, pid and start time of the process that owns them, so that one
left RUNNING by a process killed with SIGKILL can later be recognised as dead (a reused pid has
another start time).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def process_start(pid: int) -> int | None:
    """The start time of process ``pid`` in clock ticks since boot (Linux), None if unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def identity() -> dict[str, Any]:
    """This process: host, pid and start time."""
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "start": process_start(pid)}


def on_this_host(mark: Mapping[str, Any]) -> bool:
    return mark.get("host") == socket.gethostname()


def alive(mark: Mapping[str, Any]) -> bool:
    """Whether the process described by ``mark`` (same host) still runs."""
    pid = int(mark.get("pid", -1))
    if pid <= 0:
        return False
    if Path("/proc").is_dir():
        start = process_start(pid)
        return start is not None and mark.get("start") in (None, start)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
