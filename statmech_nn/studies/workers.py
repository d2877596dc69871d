"""Study worker processes: each loads the study and optimises until it holds enough trials.

A study is created once (:func:`statmech_nn.studies.storage.ensure_study`), then ``workers``
processes each ``load_study`` and optimise until the study holds the requested number of COMPLETE
trials (:class:`optuna.study.MaxTrialsCallback`; a few more may finish when workers end
together). :func:`run_workers` supervises them: a worker killed by a signal has its trials
recovered (:mod:`statmech_nn.studies.recovery`) and is replaced.
"""

from __future__ import annotations

import multiprocessing
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from statmech_nn.errors import ConfigError, StatmechError
from statmech_nn.studies.mlflow_runs import MlflowTarget, MlflowTrialLogger
from statmech_nn.studies.recovery import WORKER_ATTR, recover_dead_trials, worker_tag
from statmech_nn.studies.storage import Heartbeat, normalize_storage, open_storage


class WorkerError(StatmechError):
    """A study worker process that failed (its traceback is on stderr)."""


def make_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    """The sampler ``name`` seeded with ``seed`` (``tpe``: Optuna 5's default, set explicitly)."""
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    raise StatmechError(f"unknown sampler {name!r}; choose tpe, random or nsga2")


@dataclass(frozen=True)
class WorkerJob:
    """Everything a worker process needs; picklable (the objective must be a top-level callable
    or a dataclass instance of one)."""

    storage: str
    study_name: str
    objective: Callable[[optuna.Trial], Any]
    target_complete: int
    seed: int
    token: str
    sampler: str = "tpe"
    heartbeat: Heartbeat = field(default_factory=Heartbeat)
    mlflow: MlflowTarget | None = None


class _Tagged:
    """The objective, with the worker's identity stored on the trial first."""

    def __init__(self, objective: Callable[[optuna.Trial], Any], tag: dict[str, Any]) -> None:
        self.objective = objective
        self.tag = tag

    def __call__(self, trial: optuna.Trial) -> Any:
        trial.set_user_attr(WORKER_ATTR, self.tag)
        return self.objective(trial)


def run_worker(job: WorkerJob) -> int:
    """Optimise ``job.study_name`` until it has ``job.target_complete`` COMPLETE trials.

    Returns the number of trials this worker ran.
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)
    storage = open_storage(job.storage, job.heartbeat)
    study = optuna.load_study(
        study_name=job.study_name, storage=storage, sampler=make_sampler(job.sampler, job.seed)
    )
    if _n_complete(study) >= job.target_complete:
        return 0
    callbacks: list[Callable[[optuna.Study, FrozenTrial], None]] = [
        optuna.study.MaxTrialsCallback(job.target_complete, states=(TrialState.COMPLETE,))
    ]
    if job.mlflow is not None:
        callbacks.append(MlflowTrialLogger(job.mlflow))
    before = len(study.get_trials(deepcopy=False))
    study.optimize(
        _Tagged(job.objective, worker_tag(job.token)),
        n_trials=job.target_complete,
        callbacks=callbacks,
        gc_after_trial=False,
    )
    return len(study.get_trials(deepcopy=False)) - before


def _worker_main(job: WorkerJob) -> None:
    run_worker(job)


def _n_complete(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))


def _worker_seed(seed: int, n_existing: int, index: int) -> int:
    return int(np.random.SeedSequence([seed, n_existing, index]).generate_state(1)[0])


def run_workers(
    storage: str,
    study_name: str,
    objective: Callable[[optuna.Trial], Any],
    n_trials: int,
    workers: int = 1,
    seed: int = 0,
    sampler: str = "tpe",
    heartbeat: Heartbeat | None = None,
    mlflow: MlflowTarget | None = None,
    max_restarts: int | None = None,
    poll_s: float = 0.1,
) -> dict[str, Any]:
    """Add ``n_trials`` COMPLETE trials to an existing study with ``workers`` processes.

    ``workers=1`` runs in this process; more start ``spawn`` processes. A worker killed by a
    signal has its RUNNING trials failed and re-queued and is replaced (at most ``max_restarts``
    times, default ``workers``) while trials are missing; a worker that raises stops the run
    with :class:`WorkerError` after the others finish. Returns counts and the recovered trials.
    """
    if n_trials < 1:
        raise ConfigError(f"--trials must be at least 1, got {n_trials}")
    if workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {workers}")
    heartbeat = heartbeat or Heartbeat()
    storage = normalize_storage(storage)
    study = optuna.load_study(study_name=study_name, storage=open_storage(storage, heartbeat))
    recovered = recover_dead_trials(study, max_retry=heartbeat.max_retry)
    start_complete = _n_complete(study)
    n_existing = len(study.get_trials(deepcopy=False))
    pool = _Pool(
        study=study,
        target=start_complete + n_trials,
        heartbeat=heartbeat,
        make_job=lambda index: WorkerJob(
            storage=storage,
            study_name=study_name,
            objective=objective,
            target_complete=start_complete + n_trials,
            seed=_worker_seed(seed, n_existing, index),
            token=uuid.uuid4().hex,
            sampler=sampler,
            heartbeat=heartbeat,
            mlflow=mlflow,
        ),
        restarts_left=workers if max_restarts is None else max_restarts,
    )
    if workers == 1:
        run_worker(pool.make_job(0))
    else:
        pool.supervise(workers, poll_s)
    if pool.failures:
        raise WorkerError(
            "study workers failed: " + "; ".join(pool.failures) + " (tracebacks above)"
        )
    end_complete = _n_complete(study)
    return {
        "complete_before": start_complete,
        "complete_after": end_complete,
        "added": end_complete - start_complete,
        "killed_workers": pool.killed,
        "recovered_trials": sorted(set(recovered + pool.recovered)),
    }


@dataclass
class _Pool:
    """Worker processes of one study run: started, watched, replaced when killed by a signal."""

    study: optuna.Study
    target: int
    heartbeat: Heartbeat
    make_job: Callable[[int], WorkerJob]
    restarts_left: int
    running: dict[Any, WorkerJob] = field(default_factory=dict)
    next_index: int = 0
    killed: int = 0
    recovered: list[int] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def start(self) -> None:
        """Start one more worker process."""
        job = self.make_job(self.next_index)
        self.next_index += 1
        ctx = multiprocessing.get_context("spawn")
        proc = ctx.Process(target=_worker_main, args=(job,), name=f"study-worker-{self.next_index}")
        proc.start()
        self.running[proc] = job

    def supervise(self, workers: int, poll_s: float) -> None:
        """Start ``workers`` processes and wait for all, handling each one that ends."""
        for _ in range(workers):
            self.start()
        while self.running:
            time.sleep(poll_s)
            for proc in [p for p in self.running if not p.is_alive()]:
                self._ended(proc, self.running.pop(proc))

    def _ended(self, proc: Any, job: WorkerJob) -> None:
        """A worker ended: recover its trials; replace it if a signal killed it."""
        proc.join()
        if proc.exitcode == 0:
            return
        self.recovered += recover_dead_trials(self.study, [job.token], self.heartbeat.max_retry)
        if proc.exitcode is None or proc.exitcode >= 0:
            self.failures.append(f"{proc.name} exited with code {proc.exitcode}")
            return
        self.killed += 1
        if self.restarts_left > 0 and _n_complete(self.study) < self.target:
            self.restarts_left -= 1
            self.start()
