"""Run an ANDC study end to end: create or resume it, run the workers, summarise, log."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import optuna

from statmech_nn.errors import StatmechError
from statmech_nn.studies.mlflow_runs import MlflowTarget, _study_run
from statmech_nn.studies.objectives import OBJECTIVES, ProblemObjective, pareto_objective
from statmech_nn.studies.problem import AndcProblem, load_problem
from statmech_nn.studies.storage import (
    Heartbeat,
    StudySpec,
    _redact,
    ensure_study,
    normalize_storage,
    open_storage,
)
from statmech_nn.studies.summary import log_summary, summarize
from statmech_nn.studies.workers import run_workers


def default_study_name(problem: AndcProblem, objective: str, per_site: bool) -> str:
    run = str(problem.meta.get("snp_run_id") or "local")[:8]
    return f"andc-{objective}-{problem.kind}-{run}" + ("-per-site" if per_site else "")


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
    if objective_name not in OBJECTIVES:
        raise StatmechError(
            f"unknown objective {objective_name!r}; choose one of {list(OBJECTIVES)}"
        )
    if not 0.0 <= delta < 1.0:
        raise StatmechError(f"delta={delta} must be an accuracy drop in [0, 1), e.g. 0.01")
    storage_url = normalize_storage(storage)
    problem = load_problem(problem_dir)
    snp_run_id = snp_run_id or problem.meta.get("snp_run_id")
    study_name = study_name or default_study_name(problem, objective_name, per_site)
    attrs: dict[str, Any] = {
        "objective": objective_name,
        "kind": problem.kind,
        "variant": problem.variant,
        "per_site": bool(per_site),
        "sites": list(problem.site_names),
        "snp_run_id": snp_run_id,
    }
    if objective_name == "constrained":
        attrs["delta"] = float(delta)
    spec = StudySpec(study_name, OBJECTIVES[objective_name], attrs)
    heartbeat = heartbeat or Heartbeat()
    study = ensure_study(open_storage(storage_url, heartbeat), spec)
    kwargs = {"per_site": per_site, **(objective_kwargs or {})}
    if objective_name == "constrained":
        kwargs.setdefault("delta", delta)
    wrapped = ProblemObjective(objective, str(Path(problem_dir).resolve()), kwargs)

    client = target = None
    if snp_run_id:
        from mlflow.tracking import MlflowClient

        from statmech_nn import tracking

        uri = tracking.init_store(tracking_uri)
        client = MlflowClient(tracking_uri=uri)
        study_run_id = _study_run(client, snp_run_id, study_name, storage_url)
        exp = client.get_run(study_run_id).info.experiment_id
        target = MlflowTarget(uri, exp, study_run_id, study_name)
        params = {
            "study_name": study_name,
            "objective": objective_name,
            "sampler": sampler,
            "per_site": per_site,
            "kind": problem.kind,
            "variant": problem.variant,
        }
        if objective_name == "constrained":
            params["delta"] = delta
        with contextlib.suppress(Exception):
            for key, value in params.items():
                client.log_param(study_run_id, key, str(value))
    status = "FAILED"
    try:
        counts = run_workers(
            storage_url, study_name, wrapped, n_trials, workers, seed, sampler, heartbeat, target
        )
        study = optuna.load_study(
            study_name=study_name, storage=open_storage(storage_url, heartbeat)
        )
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(out_dir) if out_dir is not None else Path(tmp)
            summary = summarize(study, problem, folder, delta=delta, seed=seed)
            if client is not None:
                log_summary(client, target.study_run_id, summary, folder)
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        if client is not None:
            with contextlib.suppress(Exception):
                client.set_terminated(target.study_run_id, status)
    return {
        **counts,
        **summary,
        "study_name": study_name,
        "storage": _redact(storage_url),
        "study_run_id": target.study_run_id if target else None,
    }
