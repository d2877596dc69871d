"""``statmech-nn findings``: the paper's claims measured at 100 labels, each beside its control."""

from __future__ import annotations

import argparse

from statmech_nn.commands import add_tracking_uri


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "findings",
        help="train a CCT at 100 labels and measure every claim beside its null (docs/findings.md)",
        description=(
            "Train a CCT on the procedural 100-class set (20 superclasses x 5 subclasses; or "
            "CIFAR-100 with --dataset cifar100 --data-root) and run the whole analysis: SNP, "
            "order parameters over the checkpoints with the head null, an ANDC study with its "
            "random control, network ANDC against random pruning, label scaling, node "
            "cooperation and the alignment of node clusters with the superclasses against a "
            "permutation null. Each step is printed as its command; the numbers, tables and "
            "figures land in a 'findings' child run (and --out). --collect RUN_ID only redoes "
            "that last step on an existing training run."
        ),
    )
    parser.add_argument("--preset", default="cpu", choices=("cpu", "gpu"), help="size (cpu)")
    parser.add_argument(
        "--dataset", default="synthetic", choices=("synthetic", "cifar100"), help="data"
    )
    parser.add_argument("--data-root", default=None, help="dataset folder (cifar100)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--epochs", type=int, default=None, help="training epochs")
    parser.add_argument("--limit-train", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--limit-eval", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help="training seed (default: 0)")
    parser.add_argument("--experiment", default="findings", help="MLflow experiment")
    parser.add_argument("--out", default=None, help="also copy tables and figures here")
    parser.add_argument(
        "--collect", metavar="RUN_ID", default=None, help="only the findings step of a run"
    )
    parser.add_argument(
        "--alignment-permutations",
        type=int,
        default=None,
        help="permutations of the superclass null (default: the preset's)",
    )
    add_tracking_uri(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from statmech_nn import findings, tracking
    from statmech_nn.findings_collect import log_findings

    settings = findings.plan(
        args.preset,
        dataset=args.dataset,
        data_root=args.data_root,
        device=args.device,
        epochs=args.epochs,
        limit_train=args.limit_train,
        limit_eval=args.limit_eval,
        experiment=args.experiment,
        tracking_uri=args.tracking_uri,
        seed=args.seed,
        out_dir=args.out,
        alignment_permutations=args.alignment_permutations,
    )
    tracking.init_store(args.tracking_uri)
    if args.collect:
        run_id = log_findings(
            args.collect,
            permutations=settings["alignment_permutations"],
            seed=args.seed,
            out_dir=args.out,
            tracking_uri=args.tracking_uri,
            data_root=args.data_root,
        )
        print(run_id)
        return 0
    result = findings.run(settings)
    total = sum(result.seconds.values())
    print(
        f"\nfinished in {total:.0f}s ("
        + ", ".join(f"{k} {v:.0f}s" for k, v in result.seconds.items())
        + ")"
    )
    print(f"report: {result.report_path}")
    print(result.runs["findings"])
    return 0
