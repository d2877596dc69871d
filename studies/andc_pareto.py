"""ANDC Pareto study: readout accuracy and pruned fraction, both maximised.

Copy this file and edit the objective. Run it on an SNP (or training) run:

    python studies/andc_pareto.py RUN_ID --trials 100 --workers 4
    python studies/andc_pareto.py --synthetic --trials 50       # no trained model needed

Each threshold is a parameter in (0, 1): one global ``theta`` or, with ``--per-site``, one
``theta.block{i}`` per site. The sampler is Optuna 5's multi-objective default, TPE, set
explicitly and seeded per worker. The Pareto front, best thresholds and the Pareto plot (with
the random-pruning control) are written to ``--out`` and, for a run, logged to MLflow.
"""

from __future__ import annotations

import optuna

from statmech_nn import studies
from statmech_nn.studies import AndcProblem


def objective(trial: optuna.Trial, problem: AndcProblem, per_site: bool = False):
    """Masked readout accuracy (mean over the sites) and pruned fraction of ANDC at theta."""
    thetas = studies.suggest_thetas(trial, problem, per_site)
    result = problem.evaluate(thetas)
    trial.set_user_attr(studies.METRICS_ATTR, result)
    return result["andc.accuracy"], result["andc.pruned_fraction"]


def main() -> None:
    studies.script_main(objective, "pareto", __doc__.splitlines()[0])


if __name__ == "__main__":
    main()
