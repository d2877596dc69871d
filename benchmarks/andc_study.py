"""Benchmark: trials per second of a readout-level ANDC study (not a test).

A CCT-7/3x1-sized site: 256 nodes, 100 labels, 5000 cached test samples with SNP-like
structure (:func:`statmech_nn.studies.synthetic_problem`). Measures one masked evaluation, then
Pareto studies on the default journal storage: 1 process, 2 worker processes, and 1 process with
every trial logged to a SQLite MLflow store. Target: >= 20 trials/s in one process.

    python benchmarks/andc_study.py [--trials 200] [--samples 5000]

Prints a Markdown table; results are recorded in benchmarks/results_andc.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import optuna

from statmech_nn import studies


def timed_study(problem_dir, n_trials, workers, name, snp_run_id=None):
    start = time.perf_counter()
    res = studies.run_workers(
        studies.normalize_storage(None),
        name,
        studies.ProblemObjective(studies.pareto_objective, str(problem_dir)),
        n_trials,
        workers=workers,
        mlflow=snp_run_id,
    )
    return res["added"], time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--samples", type=int, default=5000)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        problem = studies.synthetic_problem(
            layers=1, nodes=256, labels=100, samples=args.samples, labels_per_node=(2, 10)
        )
        problem_dir = problem.save(Path(tmp) / "problem")
        problem = studies.load_problem(problem_dir)
        problem.evaluate(0.3)
        reps = 50
        start = time.perf_counter()
        for theta in np.linspace(0.05, 0.95, reps):
            problem.evaluate(theta)
        per_eval = (time.perf_counter() - start) / reps
        rows.append(("one masked evaluation (no Optuna)", 1, reps, per_eval * reps, 1 / per_eval))
        storage = studies.open_storage(None)
        for workers in (1, 2):
            name = f"bench-{workers}"
            studies.ensure_study(storage, studies.StudySpec(name, studies.OBJECTIVES["pareto"]))
            n, dt = timed_study(problem_dir, args.trials, workers, name)
            label = "study, journal storage" + (
                ", spawn workers incl. start-up" if workers > 1 else ""
            )
            rows.append((label, workers, n, dt, n / dt))
        from mlflow.tracking import MlflowClient

        from statmech_nn import tracking

        uri = tracking.init_store()
        client = MlflowClient(uri)
        exp = tracking.experiment_id("bench")
        parent = client.create_run(exp, run_name="study").info.run_id
        target = studies.MlflowTarget(uri, exp, parent, "bench-mlflow")
        studies.ensure_study(
            storage, studies.StudySpec("bench-mlflow", studies.OBJECTIVES["pareto"])
        )
        n_ml = max(20, args.trials // 4)
        n, dt = timed_study(problem_dir, n_ml, 1, "bench-mlflow", target)
        rows.append(("study + MLflow run per trial (SQLite)", 1, n, dt, n / dt))
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"load {os.getloadavg()[0]:.1f}; site 256 nodes x 100 labels x {args.samples} samples"
    )
    print("| what | processes | trials | seconds | trials/s |")
    print("|---|---|---|---|---|")
    for what, workers, n, dt, rate in rows:
        print(f"| {what} | {workers} | {n} | {dt:.2f} | {rate:.1f} |")


if __name__ == "__main__":
    main()
