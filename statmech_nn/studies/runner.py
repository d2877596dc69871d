"""Run an ANDC study end to end: check, create or resume it, run the workers, summarise, log.

:func:`for_run` is what ``statmech-nn study andc`` runs (the problem of an SNP run, then
:func:`run_andc_study`); every option and a resumed study's settings are checked before the
feature cache is built, the Optuna study is created or the MLflow study run is started.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from statmech_nn.errors import ConfigError
from statmech_nn.studies.mlflow_runs import MlflowTarget, MlflowTrialLogger, _study_run
from statmech_nn.studies.objectives import (
    METRIC_NAMES,
    OBJECTIVES,
    ProblemObjective,
    constrained_objective,
    pareto_objective,
)
from statmech_nn.studies.problem import AndcProblem, load_problem
from statmech_nn.studies.storage import (
    Heartbeat,
    StudySpec,
    _redact,
    andc_study_name,
    check_study,
    check_study_name,
    ensure_study,
    normalize_storage,
    open_storage,
)
from statmech_nn.studies.summary import log_summary, summarize
from statmech_nn.studies.workers import make_sampler, run_workers

log = logging.getLogger(__name__)

OBJECTIVE_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "pareto": pareto_objective,
    "constrained": constrained_objective,
}
VARIANTS = ("diagonal", "cluster")


def default_study_name(problem: AndcProblem, objective: str, per_site: bool) -> str:
    """``andc-OBJECTIVE-KIND-RUNID[-per-site]``: the study name when none is given."""
    return _default_name(str(problem.meta.get("snp_run_id") or "local"), problem.kind, objective,
                         per_site)  # fmt: skip


def _default_name(snp_run_id: str, kind: str, objective: str, per_site: bool) -> str:
    return andc_study_name(snp_run_id, kind, objective, per_site)


@dataclass(frozen=True)
class StudyOptions:
    """The choices of one ANDC study run (see ``statmech-nn study andc --help``)."""

    objective: str = "pareto"
    n_trials: int = 100
    workers: int = 1
    storage: str | None = None
    study_name: str | None = None
    per_site: bool = False
    delta: float = 0.01
    seed: int = 0
    sampler: str = "tpe"
    heartbeat: Heartbeat = Heartbeat()

    def check(self) -> str:
        """Refuse (one :class:`ConfigError`) what cannot run; return the normalised storage."""
        if self.objective not in OBJECTIVES:
            raise ConfigError(
                f"unknown objective {self.objective!r}; choose one of {list(OBJECTIVES)}"
            )
        if not 0.0 <= self.delta < 1.0:
            raise ConfigError(f"--delta {self.delta} must be an accuracy drop in [0, 1), e.g. 0.01")
        for flag, value in (("--trials", self.n_trials), ("--workers", self.workers)):
            if value < 1:
                raise ConfigError(f"{flag} must be at least 1, got {value}")
        if self.heartbeat.interval < 1 or self.heartbeat.grace_period < 1:
            raise ConfigError("--heartbeat-interval and --grace-period must be at least 1 s")
        make_sampler(self.sampler, self.seed)
        if self.study_name is not None:
            check_study_name(self.study_name)
        return normalize_storage(self.storage)


def for_run(
    run_id: str,
    options: StudyOptions | None = None,
    *,
    kind: str = "ff",
    layers: Sequence[int] | None = None,
    variant: str = "diagonal",
    min_cluster_size: int = 1,
    device: str | None = None,
    tracking_uri: str | None = None,
    rebuild_cache: bool = False,
    data_root: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """An ANDC study on the readouts of an SNP run (or a training run's newest SNP run).

    Checks every option and, for a study that exists, that it was made with these settings;
    then builds (once) the problem folder, reading the data from ``data_root`` (see
    :func:`~statmech_nn.data.data_for_analysis`), and runs :func:`run_andc_study` on it.
    """
    from statmech_nn import tracking
    from statmech_nn.snp.runs import find_snp_run
    from statmech_nn.studies.build import build_problem

    options = options or StudyOptions()
    storage = options.check()
    _check_problem_options(variant, min_cluster_size, layers)
    tracking.init_store(tracking_uri)
    snp_run_id = find_snp_run(run_id).snp_run_id
    name = options.study_name or _default_name(snp_run_id, kind, options.objective,
                                               options.per_site)  # fmt: skip
    check_study_name(name)
    attrs = {"kind": kind, "variant": variant, "snp_run_id": snp_run_id}
    _check_existing(storage, options, name, attrs)
    problem_dir = build_problem(
        run_id,
        kind=kind,
        layers=layers,
        variant=variant,
        min_cluster_size=min_cluster_size,
        device=device,
        tracking_uri=tracking_uri,
        rebuild=rebuild_cache,
        data_root=data_root,
    )
    return run_andc_study(
        problem_dir,
        objective=OBJECTIVE_FUNCTIONS[options.objective],
        objective_name=options.objective,
        n_trials=options.n_trials,
        workers=options.workers,
        storage=options.storage,
        study_name=options.study_name,
        per_site=options.per_site,
        delta=options.delta,
        seed=options.seed,
        sampler=options.sampler,
        tracking_uri=tracking_uri,
        heartbeat=options.heartbeat,
    )


def _check_problem_options(variant: str, min_cluster_size: int, layers: Any) -> None:
    if variant not in VARIANTS:
        raise ConfigError(f"unknown ANDC variant {variant!r}; choose one of {VARIANTS}")
    if min_cluster_size < 1:
        raise ConfigError(f"--min-cluster-size must be at least 1, got {min_cluster_size}")
    if layers is not None and not list(layers):
        raise ConfigError("--layers is empty; give comma-separated layer numbers or leave it out")


def _check_existing(
    storage: str, options: StudyOptions, name: str, attrs: Mapping[str, Any]
) -> None:
    """Refuse resuming study ``name`` with other settings, before anything is built or written."""
    from statmech_nn.studies.storage import _existing_study_id, storage_file

    local = storage_file(storage)
    if local is not None and not local.exists():
        return
    opened = open_storage(storage, options.heartbeat)
    if _existing_study_id(opened, name) is None:
        return
    spec_attrs = {**attrs, "objective": options.objective, "per_site": bool(options.per_site)}
    if options.objective == "constrained":
        spec_attrs["delta"] = float(options.delta)
    check_study(opened, StudySpec(name, OBJECTIVES[options.objective], spec_attrs))


def run_andc_study(
    problem_dir: str | Path,
    objective: Callable[..., Any] = pareto_objective,
    objective_name: str = "pareto",
    n_trials: int = 100,
    workers: int = 1,
    storage: str | None = None,
    study_name: str | None = None,
    per_site: bool = False,
    delta: float = 0.01,
    seed: int = 0,
    sampler: str = "tpe",
    snp_run_id: str | None = None,
    tracking_uri: str | None = None,
    heartbeat: Heartbeat | None = None,
    out_dir: str | Path | None = None,
    objective_kwargs: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Create or resume an ANDC study on ``problem_dir``, run it, summarise, log to MLflow.

    ``objective(trial, problem, **objective_kwargs)`` returns the values for the directions of
    ``objective_name`` (``pareto``: accuracy and pruned fraction, both maximised;
    ``constrained``: pruned fraction, with ``trial.set_constraint``). With ``snp_run_id`` the
    study gets an MLflow run ``study`` nested under that SNP run (reused on resume), each trial a
    run nested under it, and the summary files as artifacts. Running again with the same
    ``study_name`` adds ``n_trials`` trials to the same study.
    """
    options = StudyOptions(objective_name, n_trials, workers, storage, study_name, per_site,
                           delta, seed, sampler, heartbeat or Heartbeat())  # fmt: skip
    storage_url = options.check()
    problem = load_problem(problem_dir)
    snp_run_id = snp_run_id or problem.meta.get("snp_run_id")
    study_name = study_name or default_study_name(problem, objective_name, per_site)
    check_study_name(study_name)
    spec = _study_spec(problem, options, study_name, snp_run_id)
    ensure_study(open_storage(storage_url, options.heartbeat), spec, storage_url)
    kwargs = {"per_site": per_site, **(objective_kwargs or {})}
    if objective_name == "constrained":
        kwargs.setdefault("delta", delta)
    wrapped = ProblemObjective(objective, str(Path(problem_dir).resolve()), kwargs)
    target = None
    if snp_run_id:
        target = _mlflow_target(tracking_uri, snp_run_id, study_name, storage_url)
    params = _study_params(problem, options, study_name)
    counts, summary = _run_and_summarise(
        storage_url, study_name, wrapped, problem, options, target, out_dir, params
    )
    return {
        **counts,
        **summary,
        "study_name": study_name,
        "storage": _redact(storage_url),
        "study_run_id": target.study_run_id if target else None,
    }


def _study_spec(
    problem: AndcProblem, options: StudyOptions, name: str, snp_run_id: str | None
) -> StudySpec:
    """Name, directions and the attributes a resumed study must match."""
    attrs: dict[str, Any] = {
        "objective": options.objective,
        "kind": problem.kind,
        "variant": problem.variant,
        "per_site": bool(options.per_site),
        "sites": list(problem.site_names),
        "snp_run_id": snp_run_id,
    }
    if options.objective == "constrained":
        attrs["delta"] = float(options.delta)
    return StudySpec(name, OBJECTIVES[options.objective], attrs, METRIC_NAMES[options.objective])


def _study_params(problem: AndcProblem, options: StudyOptions, name: str) -> dict[str, Any]:
    params: dict[str, Any] = {
        "study_name": name,
        "objective": options.objective,
        "sampler": options.sampler,
        "per_site": options.per_site,
        "kind": problem.kind,
        "variant": problem.variant,
    }
    if options.objective == "constrained":
        params["delta"] = options.delta
    return params


def _mlflow_target(
    tracking_uri: str | None, snp_run_id: str, study_name: str, storage_url: str
) -> MlflowTarget:
    """The study's MLflow run under ``snp_run_id`` (reused on resume, RUNNING again)."""
    from mlflow.tracking import MlflowClient

    from statmech_nn import tracking

    uri = tracking.init_store(tracking_uri)
    client = MlflowClient(tracking_uri=uri)
    study_run_id = _study_run(client, snp_run_id, study_name, storage_url)
    exp = client.get_run(study_run_id).info.experiment_id
    return MlflowTarget(uri, exp, study_run_id, study_name)


def _log_study_params(target: MlflowTarget, params: Mapping[str, Any]) -> None:
    """Log the params a resumed study run does not have yet; warn about any that changed.

    MLflow refuses to change a logged param, and a resumed study may use another sampler.
    """
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=target.tracking_uri)
    logged = client.get_run(target.study_run_id).data.params
    for key, value in params.items():
        if key not in logged:
            client.log_param(target.study_run_id, key, str(value))
        elif logged[key] != str(value):
            log.warning(
                "study run %s keeps param %s=%s (this run uses %s)",
                target.study_run_id, key, logged[key], value,
            )  # fmt: skip


def _run_and_summarise(
    storage_url: str,
    study_name: str,
    objective: ProblemObjective,
    problem: AndcProblem,
    options: StudyOptions,
    target: MlflowTarget | None,
    out_dir: str | Path | None,
    params: Mapping[str, Any],
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run the workers, write the summary files; the study run ends FINISHED, FAILED or KILLED."""
    status = "FAILED"
    try:
        if target is not None:
            _log_study_params(target, params)
        counts = run_workers(
            storage_url, study_name, objective, options.n_trials, options.workers, options.seed,
            options.sampler, options.heartbeat, target,
        )  # fmt: skip
        storage = open_storage(storage_url, options.heartbeat)
        study = optuna.load_study(study_name=study_name, storage=storage)
        if target is not None:
            # Trials whose worker was killed between Optuna's tell and the MLflow callback (in
            # this or an earlier invocation) get their one run now.
            MlflowTrialLogger(target).reconcile(study)
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(out_dir) if out_dir is not None else Path(tmp)
            summary = summarize(study, problem, folder, delta=options.delta, seed=options.seed)
            if target is not None:
                from mlflow.tracking import MlflowClient

                client = MlflowClient(tracking_uri=target.tracking_uri)
                log_summary(client, target.study_run_id, summary, folder)
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        if target is not None:
            _end_study_run(target, status)
    return counts, summary


def _end_study_run(target: MlflowTarget, status: str) -> None:
    """Mark the study run ``status``; a failure to do so is logged, never hides the real error."""
    from mlflow.tracking import MlflowClient

    try:
        MlflowClient(tracking_uri=target.tracking_uri).set_terminated(target.study_run_id, status)
    except Exception as exc:  # noqa: BLE001 - an error raised in the try block must win
        log.warning("could not mark study run %s %s: %s", target.study_run_id, status, exc)
