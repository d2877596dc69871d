"""Study summaries: trial rows, the Pareto front, best thresholds, the Pareto plot, logging.

:func:`summarize` writes the Pareto front, best thresholds and the Pareto plot (with the
random-control curve); :func:`log_summary` logs them to the study's MLflow run.
"""

from __future__ import annotations

import functools
import json
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from statmech_nn.pruning import random_control_curve
from statmech_nn.studies.mlflow_runs import _retrying
from statmech_nn.studies.objectives import METRICS_ATTR
from statmech_nn.studies.problem import AndcProblem

DEFAULT_CONTROL_THETAS: tuple[float, ...] = tuple(np.round(np.linspace(0.05, 0.95, 19), 4).tolist())
"""The thresholds of the random-control curve unless a study asks for others."""


def trial_rows(study: optuna.Study) -> list[dict[str, Any]]:
    """COMPLETE trials as rows: number, params, values, metrics, constraints."""
    rows = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        rows.append(
            {
                "number": t.number,
                "params": dict(t.params),
                "values": list(t.values or []),
                "metrics": dict(t.user_attrs.get(METRICS_ATTR) or {}),
                "constraints": dict(t.constraints),
            }
        )
    return rows


def best_trials(study: optuna.Study) -> list[FrozenTrial]:
    """The Pareto front (feasible trials only when constraints are set)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return list(study.best_trials)


def choose_best(
    front: Sequence[Mapping[str, Any]], base_accuracy: float, delta: float = 0.01
) -> Mapping[str, Any] | None:
    """The most pruned front point whose accuracy drop is at most ``delta`` (else the most
    accurate one)."""
    if not front:
        return None
    ok = [r for r in front if base_accuracy - r["metrics"]["andc.accuracy"] <= delta + 1e-12]
    if ok:
        return max(ok, key=lambda r: r["metrics"]["andc.pruned_fraction"])
    return max(front, key=lambda r: r["metrics"]["andc.accuracy"])


def pareto_plot(
    rows: Sequence[Mapping[str, Any]],
    front: Sequence[Mapping[str, Any]],
    control: Mapping[str, np.ndarray],
    base_accuracy: float,
    path: str | Path,
    title: str = "",
) -> Path:
    """Accuracy vs pruned fraction: all trials, the front, ANDC and random-control curves."""
    import matplotlib.pyplot as plt

    from statmech_nn.figures import save_figure  # chooses the Agg backend

    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=120)
    if rows:
        ax.scatter(
            [r["metrics"]["andc.pruned_fraction"] for r in rows],
            [r["metrics"]["andc.accuracy"] for r in rows],
            s=10,
            c="0.7",
            label="trials",
        )
    if front:
        pts = sorted(
            (r["metrics"]["andc.pruned_fraction"], r["metrics"]["andc.accuracy"]) for r in front
        )
        ax.plot(*zip(*pts, strict=True), "o-", c="C3", ms=4, label="Pareto front")
    order = np.argsort(control["fraction"])
    frac = control["fraction"][order]
    ax.plot(frac, control["andc_accuracy"][order], "-", c="C0", label="ANDC (global theta)")
    mean, std = control["random_mean"][order], control["random_std"][order]
    ax.plot(frac, mean, "--", c="C2", label="random, same per-node counts")
    ax.fill_between(frac, mean - std, mean + std, color="C2", alpha=0.2)
    ax.axhline(base_accuracy, c="k", lw=0.8, ls=":", label="unpruned")
    ax.set_xlabel("pruned fraction of readout connections")
    ax.set_ylabel("readout accuracy (test)")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    return save_figure(fig, path)


def summarize(
    study: optuna.Study,
    problem: AndcProblem,
    out_dir: str | Path,
    delta: float = 0.01,
    control_thetas: Sequence[float] | None = None,
    draws: int = 5,
    seed: int = 0,
) -> dict[str, Any]:
    """Write ``pareto_front.json``, ``best_thresholds.json``, ``trials.json``,
    ``random_control.json`` and ``pareto.png`` to ``out_dir``; return the summary."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = trial_rows(study)
    front_numbers = {t.number for t in best_trials(study)}
    front = [r for r in rows if r["number"] in front_numbers]
    best = choose_best(front, problem.base_accuracy, delta)
    thetas = DEFAULT_CONTROL_THETAS if control_thetas is None else control_thetas
    control = random_control_curve(problem.cache, problem.diag, thetas, draws, seed)
    best_out = None
    if best is not None:
        best_out = {
            "trial": best["number"],
            "thresholds": best["params"],
            "accuracy": best["metrics"]["andc.accuracy"],
            "pruned_fraction": best["metrics"]["andc.pruned_fraction"],
            "accuracy_drop": best["metrics"]["andc.accuracy_drop"],
            "delta": delta,
        }
    files = {
        "trials.json": rows,
        "pareto_front.json": front,
        "best_thresholds.json": best_out,
        "random_control.json": {k: v.tolist() for k, v in control.items()},
    }
    for name, payload in files.items():
        (out_dir / name).write_text(json.dumps(payload, indent=2), encoding="utf-8")
    pareto_plot(
        rows,
        front,
        control,
        problem.base_accuracy,
        out_dir / "pareto.png",
        title=f"ANDC study {study.study_name}",
    )
    return {
        "n_complete": len(rows),
        "front": front,
        "best": best_out,
        "base_accuracy": problem.base_accuracy,
        "files": sorted([*files, "pareto.png"]),
    }


def log_summary(client: Any, run_id: str, summary: Mapping[str, Any], out_dir: str | Path) -> None:
    """Log the summary's files as artifacts (``study/``) and its best point as metrics."""
    out_dir = Path(out_dir)
    for name in summary["files"]:
        _retrying(functools.partial(client.log_artifact, run_id, str(out_dir / name), "study"))
    best = summary.get("best")
    _retrying(lambda: client.log_metric(run_id, "andc.base_accuracy", summary["base_accuracy"]))
    _retrying(lambda: client.log_metric(run_id, "study.n_complete", summary["n_complete"]))
    if best:
        _retrying(lambda: client.log_metric(run_id, "andc.accuracy", best["accuracy"]))
        _retrying(
            lambda: client.log_metric(run_id, "andc.pruned_fraction", best["pruned_fraction"])
        )
