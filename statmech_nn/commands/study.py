"""``statmech-nn study andc RUN_ID``: an Optuna study on ANDC pruning thresholds."""

from __future__ import annotations

import argparse
import json

from statmech_nn.commands.options import add_data_root, add_tracking_uri
from statmech_nn.errors import ConfigError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "study",
        help="Optuna studies on the analysis (ANDC pruning thresholds)",
        description="Optuna studies. Run `statmech-nn study andc --help` for the ANDC study.",
    )
    sub = parser.add_subparsers(dest="study", metavar="STUDY")
    andc = sub.add_parser(
        "andc",
        help="tune ANDC pruning thresholds of a run's readouts",
        description=(
            "Tune the threshold theta of ANDC pruning (methods.md section 8) on the readouts of "
            "an SNP run: keep node n's connection to output j iff its normalised SNP matrix has "
            "M_n[j, j] > theta. Objectives: 'pareto' maximises readout accuracy and pruned "
            "fraction together (Pareto front); 'constrained' maximises the pruned fraction with "
            "an accuracy drop of at most --delta. Readout inputs of the test split are cached "
            "once under mlruns/andc/, so a trial is one masked matrix product. The study is "
            "logged as an MLflow run 'study' nested under the SNP run, each trial as a run "
            "nested under it; the Pareto front, best thresholds and a Pareto plot with the "
            "random-pruning control are its artifacts. Running the same command again adds "
            "--trials trials to the same study."
        ),
    )
    _add_study_arguments(andc)
    _add_problem_arguments(andc)
    andc.set_defaults(func=run)
    parser.set_defaults(func=lambda args: _help(parser))


def _add_study_arguments(andc: argparse.ArgumentParser) -> None:
    """The run, its trials, objective, workers, storage, name, sampler and heartbeat."""
    andc.add_argument(
        "run_id", metavar="RUN_ID", help="an SNP run id, or a training run id (its newest SNP run)"
    )
    andc.add_argument(
        "--trials", type=int, default=100, help="COMPLETE trials to add (default: 100)"
    )
    andc.add_argument(
        "--objective",
        choices=("pareto", "constrained"),
        default="pareto",
        help="pareto (accuracy and pruned fraction) or constrained (default: pareto)",
    )
    andc.add_argument(
        "--delta",
        type=float,
        default=0.01,
        help="allowed drop of the mean readout accuracy, as a fraction (default: 0.01 = 1 point)",
    )
    andc.add_argument(
        "--workers",
        type=int,
        default=1,
        help="worker processes on this machine sharing the study (default: 1)",
    )
    andc.add_argument(
        "--storage",
        default=None,
        help=(
            "Optuna storage: a journal file path (default: mlruns/optuna.journal) or an RDB URL "
            "such as postgresql://user@host/db or sqlite:///optuna.db for workers on several "
            "machines (never the MLflow database)"
        ),
    )
    andc.add_argument(
        "--study-name",
        default=None,
        help="study name (default: andc-OBJECTIVE-KIND-RUNID[-per-site]); reuse it to resume",
    )
    andc.add_argument(
        "--sampler",
        choices=("tpe", "random", "nsga2"),
        default="tpe",
        help="Optuna sampler, seeded per worker (default: tpe)",
    )
    andc.add_argument("--seed", type=int, default=0, help="base sampler seed (default: 0)")
    andc.add_argument(
        "--heartbeat-interval",
        type=int,
        default=60,
        help="RDB storages: seconds between a running trial's heartbeats (default: 60)",
    )
    andc.add_argument(
        "--grace-period",
        type=int,
        default=120,
        help="RDB storages: a trial silent this long is failed and retried (default: 120)",
    )


def _add_problem_arguments(andc: argparse.ArgumentParser) -> None:
    """What is pruned (sites, variant, thresholds) and where the feature cache comes from."""
    andc.add_argument(
        "--per-site",
        action="store_true",
        help="one threshold per site (theta.block{i}) instead of one global threshold",
    )
    andc.add_argument(
        "--kind", default="ff", help="site kind whose readouts are pruned (default: ff)"
    )
    andc.add_argument(
        "--layers",
        default=None,
        help="comma-separated layers of that kind to include (default: all)",
    )
    andc.add_argument(
        "--variant",
        choices=("diagonal", "cluster"),
        default="diagonal",
        help="keep labels with B_n[j, j] = 1 (diagonal) or labels in clusters (default: diagonal)",
    )
    andc.add_argument(
        "--min-cluster-size",
        type=int,
        default=1,
        help="cluster variant: smallest cluster whose labels are kept (default: 1)",
    )
    andc.add_argument("--device", default=None, help="device for building the feature cache")
    add_data_root(andc)
    add_tracking_uri(andc)
    andc.add_argument(
        "--rebuild-cache", action="store_true", help="recompute the cached readout inputs"
    )


def _help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _layers(text: str | None) -> list[int] | None:
    """``--layers 1,3`` -> ``[1, 3]``; ``None`` when not given."""
    if not text:
        return None
    try:
        return [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError as exc:
        raise ConfigError(f"--layers must be comma-separated layer numbers, got {text!r}") from exc


def run(args: argparse.Namespace) -> int:
    from statmech_nn import studies

    options = studies.StudyOptions(
        objective=args.objective,
        n_trials=args.trials,
        workers=args.workers,
        storage=args.storage,
        study_name=args.study_name,
        per_site=args.per_site,
        delta=args.delta,
        seed=args.seed,
        sampler=args.sampler,
        heartbeat=studies.Heartbeat(args.heartbeat_interval, args.grace_period),
    )
    result = studies.for_run(
        args.run_id,
        options,
        kind=args.kind,
        layers=_layers(args.layers),
        variant=args.variant,
        min_cluster_size=args.min_cluster_size,
        device=args.device,
        tracking_uri=args.tracking_uri,
        rebuild_cache=args.rebuild_cache,
        data_root=args.data_root,
    )
    for line in result_lines(result):
        print(line)
    return 0


def result_lines(result: dict) -> list[str]:
    """What ``study andc`` prints: the counts, the best thresholds, the study run id last."""
    lines = [
        f"study {result['study_name']} ({result['storage']}): {result['complete_after']} "
        f"complete trials (+{result['added']}), unpruned accuracy "
        f"{result['base_accuracy']:.4f}, Pareto front of {len(result['front'])}"
    ]
    if result["best"]:
        lines.append("best: " + json.dumps(result["best"]))
    return [*lines, result["study_run_id"] or ""]
