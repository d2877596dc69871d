"""``statmech-nn prune RUN_ID``: network-level ANDC pruning with a short retraining."""

from __future__ import annotations

import argparse

from statmech_nn.commands import options


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "prune",
        help="network-level ANDC: cut weights between nodes without a shared label, retrain",
        description=(
            "Network-level ANDC pruning (methods.md section 8, the [AFCC] analogue) of training "
            "run RUN_ID: between consecutive sites (CCT: ff_hidden -> ff through linear2, ff -> "
            "next block's ff_hidden through linear1; VGG: conv k -> conv k+1 kernel slices) the "
            "weight from node u to node v is kept iff u and v recognise a common label "
            "(M_n[l, l] > theta in the SNP matrices), all others are cut. Test accuracy is "
            "measured before pruning, after it, and after a short retraining under the mask "
            "(AdamW, cut weights stay zero), against a random control that cuts as many weights "
            "per layer. Needs an SNP run with the site kinds ff,ff_hidden (CCT) or conv (VGG). "
            "Logged as a child run 'andc-network' with the pruned model as its checkpoint; its "
            "id is printed on the last line."
        ),
    )
    parser.add_argument("run_id", metavar="RUN_ID", help="the MLflow id of a training run")
    parser.add_argument(
        "--theta",
        type=float,
        default=0.3,
        help="threshold in (0, 1) on the normalised SNP diagonals (default: 0.3)",
    )
    parser.add_argument(
        "--epochs", type=int, default=1, help="epochs of retraining under the mask (default: 1)"
    )
    parser.add_argument(
        "--lr",
        type=float,
        default=None,
        help="retraining learning rate, cosine-decayed to 0 (default: training lr / 10)",
    )
    parser.add_argument(
        "--weight-decay",
        type=float,
        default=None,
        help="retraining AdamW weight decay (default: the training run's)",
    )
    parser.add_argument(
        "--batch-size", type=int, default=None, help="retraining batch size (default: training's)"
    )
    parser.add_argument(
        "--snp-run",
        dest="snp_run",
        metavar="SNP_RUN_ID",
        default=None,
        help="SNP run whose matrices define the masks (default: the run's newest SNP run)",
    )
    parser.add_argument(
        "--random-draws",
        type=int,
        default=1,
        help="random-pruning controls, each retrained like ANDC; 0 skips them (default: 1)",
    )
    parser.add_argument("--seed", type=int, default=0, help="retraining and control seed")
    options.add_data_root(parser)
    options.add_device(parser)
    options.add_tracking_uri(parser)
    options.add_no_progress(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from statmech_nn.pruning import prune_network, summary_lines

    options.at_least("--epochs", args.epochs, 0)
    options.at_least("--random-draws", args.random_draws, 0)
    options.at_least("--batch-size", args.batch_size, 1)
    options.positive_float("--lr", args.lr)
    child_id, result = prune_network(
        args.run_id,
        theta=args.theta,
        epochs=args.epochs,
        lr=args.lr,
        snp_run_id=args.snp_run,
        device=args.device,
        weight_decay=args.weight_decay,
        batch_size=args.batch_size,
        seed=args.seed,
        random_draws=args.random_draws,
        tracking_uri=args.tracking_uri,
        progress=not args.no_progress,
        data_root=args.data_root,
    )
    for line in summary_lines(result):
        print(line)
    print(child_id)
    return 0
