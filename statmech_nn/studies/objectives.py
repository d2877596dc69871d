"""ANDC study objectives: thresholds suggested by Optuna, scored on an :class:`AndcProblem`."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import optuna

from statmech_nn.studies.problem import AndcProblem, load_problem

OBJECTIVES: dict[str, tuple[str, ...]] = {
    "pareto": ("maximize", "maximize"),
    "constrained": ("maximize",),
}
METRIC_NAMES: dict[str, tuple[str, ...]] = {
    "pareto": ("andc.accuracy", "andc.pruned_fraction"),
    "constrained": ("andc.pruned_fraction",),
}
"""The objectives' names, one per direction: the study's metric names and the trials' metrics."""
THETA_RANGE = (0.01, 0.99)
METRICS_ATTR = "metrics"


def suggest_thetas(trial: optuna.Trial, problem: AndcProblem, per_site: bool) -> np.ndarray:
    """Thresholds in ``THETA_RANGE`` (inside (0, 1)): one ``theta``, or ``theta.{site}`` each."""
    low, high = THETA_RANGE
    if per_site:
        return np.array([trial.suggest_float(f"theta.{s}", low, high) for s in problem.site_names])
    return np.full(len(problem.layers), trial.suggest_float("theta", low, high))


def pareto_objective(
    trial: optuna.Trial, problem: AndcProblem, per_site: bool = False
) -> tuple[float, float]:
    """Objectives (both maximised): masked readout accuracy, pruned fraction."""
    result = problem.evaluate(suggest_thetas(trial, problem, per_site))
    trial.set_user_attr(METRICS_ATTR, result)
    return result["andc.accuracy"], result["andc.pruned_fraction"]


def constrained_objective(
    trial: optuna.Trial, problem: AndcProblem, per_site: bool = False, delta: float = 0.01
) -> float:
    """Maximise the pruned fraction subject to ``accuracy drop - delta <= 0``."""
    result = problem.evaluate(suggest_thetas(trial, problem, per_site))
    trial.set_user_attr(METRICS_ATTR, result)
    trial.set_constraint("accuracy_drop", result["andc.accuracy_drop"] - delta)
    return result["andc.pruned_fraction"]


@dataclass(frozen=True)
class ProblemObjective:
    """A picklable objective: ``fn(trial, load_problem(problem_dir), **kwargs)``.

    ``fn`` must be importable by worker processes: a top-level function of a module, or of a
    script run as ``__main__`` (``spawn`` re-imports it).
    """

    fn: Callable[..., Any]
    problem_dir: str
    kwargs: Mapping[str, Any] = field(default_factory=dict)

    def __call__(self, trial: optuna.Trial) -> Any:
        return self.fn(trial, load_problem(self.problem_dir), **dict(self.kwargs))
