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

import argparse

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
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_id", nargs="?", help="SNP or training run id")
    parser.add_argument("--synthetic", action="store_true", help="a synthetic problem instead")
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--storage", default=None, help="default: mlruns/optuna.journal")
    parser.add_argument("--study-name", default=None)
    parser.add_argument("--per-site", action="store_true")
    parser.add_argument("--kind", default="ff")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="andc_pareto_out", help="folder for the summary files")
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
        objective_name="pareto",
        n_trials=args.trials,
        workers=args.workers,
        storage=args.storage,
        study_name=args.study_name,
        per_site=args.per_site,
        seed=args.seed,
        sampler="tpe",
        out_dir=args.out,
    )
    print(f"{result['complete_after']} trials; Pareto front of {len(result['front'])}")
    print(f"best: {result['best']}")


if __name__ == "__main__":
    main()
