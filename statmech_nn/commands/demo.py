"""``statmech-nn demo``: the whole pipeline on bundled data, offline, in minutes on a CPU."""

from __future__ import annotations

import argparse

from statmech_nn.commands import add_tracking_uri


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="train a small CCT on bundled digits and run every analysis (the main job)",
        description=(
            "Train a small CCT (default: on scikit-learn's bundled handwritten digits, offline), "
            "compute the single-node matrices of every MHA and FF site, the order parameters "
            "with the head null model, the symmetry-breaking onset over the saved checkpoints, "
            "a short ANDC Pareto study, and an HTML report; everything is logged to MLflow "
            "(./mlruns by default). Each step is printed as the statmech-nn command it runs, "
            "so you can rerun or vary it. About 5 minutes on 2 CPU cores. --task text "
            "fine-tunes a small BERT-style encoder (hf:bert-tiny-text) on the procedural text "
            "set textsynth instead, with padding masked in every readout, and adds node "
            "cooperation where it is installed."
        ),
    )
    parser.add_argument(
        "--task",
        default="image",
        choices=("image", "text"),
        help="image (default: a CCT on images) or text (a BERT-style encoder on textsynth)",
    )
    parser.add_argument(
        "--dataset",
        default=None,
        choices=("digits", "synthetic", "cifar100", "textsynth"),
        help=(
            "image: digits (default, bundled), synthetic (procedural label hierarchy), or "
            "cifar100 (CCT-7/3x1 with the reference recipe; needs --data-root and a GPU); "
            "text: textsynth (default, procedural topics with superclasses)"
        ),
    )
    parser.add_argument("--data-root", default=None, help="dataset folder (cifar100)")
    parser.add_argument(
        "--device", default="auto", choices=("auto", "cpu", "cuda"), help="torch device"
    )
    parser.add_argument("--epochs", type=int, default=None, help="training epochs")
    parser.add_argument("--trials", type=int, default=None, help="ANDC study trials")
    parser.add_argument("--readout-epochs", type=int, default=None, help="readout epochs")
    parser.add_argument("--limit-train", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--limit-eval", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help="training seed (default: 0)")
    parser.add_argument("--experiment", default="demo", help="MLflow experiment (default: demo)")
    add_tracking_uri(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from statmech_nn import demo, tracking

    settings = demo.plan(
        demo.preset_for(args.task, args.dataset),
        data_root=args.data_root,
        device=args.device,
        epochs=args.epochs,
        trials=args.trials,
        readout_epochs=args.readout_epochs,
        limit_train=args.limit_train,
        limit_eval=args.limit_eval,
        experiment=args.experiment,
        tracking_uri=args.tracking_uri,
        seed=args.seed,
    )
    uri = tracking.init_store(args.tracking_uri)
    result = demo.run(settings)
    print("\n=== summary")
    print(demo.summary_table(result))
    total = sum(result.seconds.values())
    steps = ", ".join(f"{k} {v:.0f}s" for k, v in result.seconds.items())
    print(f"\nfinished in {total:.0f}s ({steps})")
    print("\nLook further:")
    print(f"  mlflow ui --backend-store-uri {uri}")
    print("  optuna-dashboard mlruns/optuna.journal   (pip install 'statmech-nn[dashboard]')")
    print(f"  report: {result.report_path}")
    print("  the commands this demo ran:")
    for command in result.commands:
        print(f"    {command}")
    print(result.train_run_id)
    return 0
