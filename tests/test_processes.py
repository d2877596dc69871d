"""Process marks: this process is alive, an exited one or a reused pid is not, old marks read."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from statmech_nn import processes


def test_this_process_is_alive_and_its_mark_survives_json():
    mark = json.loads(json.dumps(processes.identity()))
    assert mark["pid"] == os.getpid() and processes.on_this_host(mark)
    assert processes.alive(mark)
    assert processes.alive({"host": mark["host"], "pid": os.getpid()})  # no time: pid only


def test_an_exited_process_and_a_reused_pid_are_dead():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    mark = {"pid": child.pid, "created": psutil.Process(child.pid).create_time()}
    child.wait()
    assert not psutil.pid_exists(child.pid) or not processes.alive(mark)
    assert not processes.alive(mark)
    mine = processes.identity()
    assert not processes.alive({**mine, "created": mine["created"] - 5.0})  # pid reused later
    assert not processes.alive({"pid": 0}) and not processes.alive({})


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="old marks were Linux-only")
def test_old_marks_in_clock_ticks_still_read():
    """Marks written before psutil held ``start``: /proc/PID/stat field 22, ticks since boot."""
    stat = Path(f"/proc/{os.getpid()}/stat").read_text()
    ticks = int(stat.rsplit(")", 1)[1].split()[19])
    assert processes.alive({"pid": os.getpid(), "start": ticks})
    assert not processes.alive({"pid": os.getpid(), "start": ticks - 500})
