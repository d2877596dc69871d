"""Recovery of trials left RUNNING by dead worker processes.

Optuna 5's journal storage has no heartbeat; for it (and, faster, for any storage) the
supervising process fails and re-queues the RUNNING trials of a local worker that died, and
every run first sweeps RUNNING trials left by dead processes of this host (each trial records
its worker's host, pid and process start time under :data:`WORKER_ATTR`).
"""

from __future__ import annotations

import socket
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from statmech_nn import processes

WORKER_ATTR = "worker"


def worker_tag(token: str) -> dict[str, Any]:
    """Identity of this process, stored on each trial: host, pid, start time, token."""
    return {**processes.identity(), "token": token}


def retry_trial(study: optuna.Study, trial: FrozenTrial, max_retry: int | None = 3) -> bool:
    """Fail RUNNING ``trial`` and queue a copy (as Optuna's heartbeat retry does).

    Through the public ``study.tell``: telling a trial that another process has finished in the
    meantime raises (``ValueError`` before the write, ``UpdateFinishedTrialError`` in a race), so
    exactly one recovering process queues the copy. Returns ``False`` if someone else handled it.
    """
    try:
        study.tell(trial.number, state=TrialState.FAIL)
    except (ValueError, optuna.exceptions.UpdateFinishedTrialError):
        return False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retry)(study, trial)
    return True


def recover_dead_trials(
    study: optuna.Study,
    tokens: Sequence[str] | None = None,
    max_retry: int | None = 3,
) -> list[int]:
    """Fail and re-queue RUNNING trials of dead workers; returns their trial numbers.

    With ``tokens``: the trials of those (known dead) workers. Without: trials whose recorded
    worker ran on this host and is no longer alive.
    """
    host = socket.gethostname()
    done = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        tag = trial.user_attrs.get(WORKER_ATTR)
        if not isinstance(tag, Mapping):
            continue
        if tokens is not None:
            dead = tag.get("token") in tokens
        else:
            dead = tag.get("host") == host and not processes.alive(tag)
        if dead and retry_trial(study, trial, max_retry):
            done.append(trial.number)
    return done
