"""The command line shared by the runnable study files in ``studies/`` (copied and edited)."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import Any

from statmech_nn.studies.build import build_problem
from statmech_nn.studies.problem import synthetic_problem
from statmech_nn.studies.runner import run_andc_study


def script_main(
    objective: Callable[..., Any],
    objective_name: str,
    description: str,
    argv: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Parse a study script's arguments, run ``objective`` as an ANDC study, print the result.

    ``objective_name`` (``pareto`` or ``constrained``) sets the directions; ``constrained`` also
    takes ``--delta``. The summary files go to ``--out`` (default ``andc_{objective_name}_out``).
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("run_id", nargs="?", help="SNP or training run id")
    parser.add_argument("--synthetic", action="store_true", help="a synthetic problem instead")
    parser.add_argument("--trials", type=int, default=100)
    if objective_name == "constrained":
        parser.add_argument("--delta", type=float, default=0.01, help="allowed accuracy drop")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--storage", default=None, help="default: mlruns/optuna.journal")
    parser.add_argument("--study-name", default=None)
    parser.add_argument("--per-site", action="store_true")
    parser.add_argument("--kind", default="ff")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out", default=f"andc_{objective_name}_out", help="folder for the summary files"
    )
    args = parser.parse_args(argv)
    if args.synthetic:
        problem_dir = synthetic_problem(layers=3, nodes=64, labels=10).save("mlruns/andc/synthetic")
    elif args.run_id:
        problem_dir = build_problem(args.run_id, kind=args.kind)
    else:
        parser.error("give RUN_ID or --synthetic")
    extra = {"delta": args.delta} if objective_name == "constrained" else {}
    result = run_andc_study(
        problem_dir,
        objective=objective,
        objective_name=objective_name,
        n_trials=args.trials,
        workers=args.workers,
        storage=args.storage,
        study_name=args.study_name,
        per_site=args.per_site,
        seed=args.seed,
        sampler="tpe",
        out_dir=args.out,
        **extra,
    )
    if objective_name == "constrained":
        print(f"{result['complete_after']} trials; best feasible: {result['best']}")
    else:
        print(f"{result['complete_after']} trials; Pareto front of {len(result['front'])}")
        print(f"best: {result['best']}")
    return result
