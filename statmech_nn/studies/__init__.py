"""Optuna studies on ANDC thresholds: storages, worker processes, MLflow logging, summaries.

A study is created once (:func:`ensure_study`), then ``workers`` processes each ``load_study``
and optimise until the study holds the requested number of COMPLETE trials
(:class:`optuna.study.MaxTrialsCallback`; a few more may finish when workers end together).

Storages (:func:`open_storage`): by default an Optuna journal file ``mlruns/optuna.journal``
(``JournalStorage(JournalFileBackend)``: safe for processes on one machine, never the MLflow
SQLite file); any SQLAlchemy RDB URL (``postgresql://...``, ``sqlite:///other.db``) for workers
on many machines, opened with a heartbeat (``heartbeat_interval``, ``grace_period``) and
:class:`optuna.storages.RetryHeartbeatStaleTrialCallback`, so the trial of a worker that died is
failed and re-queued by the next worker that starts a trial. Optuna 5's journal storage has no
heartbeat; for it (and, faster, for any storage) the supervising process fails and re-queues the
RUNNING trials of a local worker that died, and every run first sweeps RUNNING trials left by
dead processes of this host (each trial records its worker's host, pid and process start time).

Every finished trial is logged by :class:`MlflowTrialLogger` as a run nested under the study's
MLflow run (thresholds as params, ``andc.*`` metrics); :func:`summarize` logs the Pareto front,
best thresholds and the Pareto plot (with the random-control curve) to the study run.

Modules: ``storage`` (storage URLs, studies), ``recovery`` (trials of dead workers),
``workers`` (worker processes), ``mlflow_runs`` (study and trial runs), ``problem`` (the ANDC
problem), ``build`` (the problem of an SNP run), ``objectives``, ``summary``, ``runner``
(:func:`run_andc_study`) and ``script`` (the command line of the files in ``studies/``).
"""

from __future__ import annotations

from statmech_nn import logs
from statmech_nn.studies.build import build_problem, stderr
from statmech_nn.studies.mlflow_runs import MlflowTarget, MlflowTrialLogger
from statmech_nn.studies.objectives import (
    METRICS_ATTR,
    OBJECTIVES,
    THETA_RANGE,
    ProblemObjective,
    constrained_objective,
    pareto_objective,
    suggest_thetas,
)
from statmech_nn.studies.problem import (
    PROBLEM_SCHEMA,
    AndcProblem,
    load_problem,
    post_pool_diagonals,
    synthetic_problem,
)
from statmech_nn.studies.recovery import (
    WORKER_ATTR,
    recover_dead_trials,
    retry_trial,
    worker_tag,
)
from statmech_nn.studies.runner import StudyOptions, default_study_name, for_run, run_andc_study
from statmech_nn.studies.script import script_main
from statmech_nn.studies.storage import (
    DEFAULT_JOURNAL,
    RDB_SCHEMES,
    Heartbeat,
    StorageError,
    StudyMismatchError,
    StudySpec,
    andc_study_name,
    check_study,
    check_study_name,
    ensure_study,
    normalize_storage,
    open_storage,
)
from statmech_nn.studies.summary import (
    best_trials,
    choose_best,
    log_summary,
    pareto_plot,
    summarize,
    trial_rows,
)
from statmech_nn.studies.workers import (
    WorkerError,
    WorkerJob,
    _worker_main,  # noqa: F401 - started as a spawn target by tests
    make_sampler,
    run_worker,
    run_workers,
)

__all__ = [
    "DEFAULT_JOURNAL",
    "METRICS_ATTR",
    "OBJECTIVES",
    "PROBLEM_SCHEMA",
    "RDB_SCHEMES",
    "THETA_RANGE",
    "WORKER_ATTR",
    "AndcProblem",
    "Heartbeat",
    "MlflowTarget",
    "MlflowTrialLogger",
    "ProblemObjective",
    "StorageError",
    "StudyMismatchError",
    "StudyOptions",
    "StudySpec",
    "WorkerError",
    "WorkerJob",
    "best_trials",
    "build_problem",
    "check_study",
    "andc_study_name",
    "check_study_name",
    "choose_best",
    "constrained_objective",
    "default_study_name",
    "ensure_study",
    "for_run",
    "load_problem",
    "log_summary",
    "make_sampler",
    "normalize_storage",
    "open_storage",
    "pareto_objective",
    "pareto_plot",
    "post_pool_diagonals",
    "recover_dead_trials",
    "retry_trial",
    "run_andc_study",
    "run_worker",
    "run_workers",
    "script_main",
    "stderr",
    "suggest_thetas",
    "summarize",
    "synthetic_problem",
    "trial_rows",
    "worker_tag",
]

logs.apply_library_levels()  # Optuna, just imported, put its logger back at INFO
