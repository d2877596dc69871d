"""Objectives for the multi-worker study tests, importable by spawned worker processes."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import optuna

from statmech_nn.studies import AndcProblem, pareto_objective


def kill_once_objective(
    trial: optuna.Trial, problem: AndcProblem, marker: str, sleep_s: float = 0.01
) -> tuple[float, float]:
    """The Pareto objective; the first trial to claim ``marker`` SIGKILLs its own worker.

    The claim is an exclusive file creation, so exactly one trial (in one process) dies, after
    its parameters are sampled: a worker killed mid-trial.
    """
    values = pareto_objective(trial, problem)
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        time.sleep(sleep_s)
        return values
    os.write(fd, f"{trial.number}\n".encode())
    os.fsync(fd)
    os.close(fd)
    os.kill(os.getpid(), signal.SIGKILL)
    raise AssertionError("unreachable")


def always_kill_objective(trial: optuna.Trial, problem: AndcProblem, marker: str) -> float:
    """Record the trial number in ``marker``, then SIGKILL this process (an unsupervised crash)."""
    pareto_objective(trial, problem)
    Path(marker).write_text(f"{trial.number}\n")
    os.kill(os.getpid(), signal.SIGKILL)
    raise AssertionError("unreachable")


def failing_objective(trial: optuna.Trial, problem: AndcProblem) -> float:
    raise RuntimeError("objective bug")
