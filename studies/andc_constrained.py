"""ANDC constrained study: maximise the pruned fraction with an accuracy drop of at most delta.

Copy this file and edit the objective. Run it on an SNP (or training) run:

    python studies/andc_constrained.py RUN_ID --trials 100 --delta 0.01 --workers 4
    python studies/andc_constrained.py --synthetic --trials 50

The constraint is set with Optuna 5's ``trial.set_constraint`` (feasible when <= 0):
``accuracy_drop - delta``, where the drop is the unpruned minus the masked mean readout accuracy.
TPE, seeded per worker, takes the constraint into account.
"""

from __future__ import annotations

import optuna

from statmech_nn import studies
from statmech_nn.studies import AndcProblem


def objective(
    trial: optuna.Trial, problem: AndcProblem, per_site: bool = False, delta: float = 0.01
) -> float:
    """Pruned fraction of ANDC at theta, constrained by the accuracy drop."""
    thetas = studies.suggest_thetas(trial, problem, per_site)
    result = problem.evaluate(thetas)
    trial.set_user_attr(studies.METRICS_ATTR, result)
    trial.set_constraint("accuracy_drop", result["andc.accuracy_drop"] - delta)
    return result["andc.pruned_fraction"]


def main() -> None:
    studies.script_main(objective, "constrained", __doc__.splitlines()[0])


if __name__ == "__main__":
    main()
