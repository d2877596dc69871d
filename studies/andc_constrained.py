"""ANDC constrained study: maximise the pruned fraction with an accuracy drop of at most delta.

Copy this file and edit the objective. Run it on an SNP (or training) run:

    python studies/andc_constrained.py RUN_ID --trials 100 --delta 0.01 --workers 4
    python studies/andc_constrained.py --synthetic --trials 50

The constraint is set with Optuna 5's ``trial.set_constraint`` (feasible when <= 0):
``accuracy_drop - delta``, where the drop is the unpruned minus the masked mean readout accuracy.
TPE, seeded per worker, takes the constraint into account.
"""

from __future__ import annotations

import argparse

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
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_id", nargs="?", help="SNP or training run id")
    parser.add_argument("--synthetic", action="store_true", help="a synthetic problem instead")
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--delta", type=float, default=0.01, help="allowed accuracy drop")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--storage", default=None, help="default: mlruns/optuna.journal")
    parser.add_argument("--study-name", default=None)
    parser.add_argument("--per-site", action="store_true")
    parser.add_argument("--kind", default="ff")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="andc_constrained_out")
    args = parser.parse_args()
    if args.synthetic:
        problem_dir = studies.synthetic_problem(layers=3, nodes=64, labels=10).save(
            "mlruns/andc/synthetic"
        )
    elif args.run_id:
        problem_dir = studies.build_problem(args.run_id, kind=args.kind)
    else:
        parser.error("give RUN_ID or --synthetic")
    result = studies.run_andc_study(
        problem_dir,
        objective=objective,
        objective_name="constrained",
        n_trials=args.trials,
        workers=args.workers,
        storage=args.storage,
        study_name=args.study_name,
        per_site=args.per_site,
        delta=args.delta,
        seed=args.seed,
        sampler="tpe",
        out_dir=args.out,
    )
    print(f"{result['complete_after']} trials; best feasible: {result['best']}")


if __name__ == "__main__":
    main()
