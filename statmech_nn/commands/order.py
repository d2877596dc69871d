"""``statmech-nn order RUN_ID``: clusters, noise, SNR and head symmetry breaking of an SNP run."""

from __future__ import annotations

import argparse

from statmech_nn.commands.options import add_data_root, add_tracking_uri
from statmech_nn.order.pipeline import SNR_FORMS
from statmech_nn.order.stats import SNR_VARIANTS


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "order",
        help="order parameters (clusters, noise, SNR, head symmetry breaking Q) of an SNP run",
        description=(
            "Binarise the single-node matrices of an SNP run at THETA and compute per site the "
            "clusters, signal, noise and SNR (methods.md section 5) and, for MHA sites, the head "
            "symmetry-breaking order parameter Q with its permutation null model (section 6). "
            "RUN_ID is an SNP child run or a training run (its newest SNP child is used). "
            "Metrics (snr.{kind}.block{i}, noise..., signal..., clusters..., order.Q.block{i}, "
            "order.Q_null_mean/Q_null_std/Q_z/Q_pvalue.block{i}) and figures go to a child run "
            "'order' of the training run. Prints the child run id on the last line."
        ),
    )
    parser.add_argument("run_id", metavar="RUN_ID", help="an SNP child run or a training run")
    parser.add_argument(
        "--theta",
        type=float,
        default=0.3,
        help="binarisation threshold in (0, 1), strict M/max(M) > theta (default: 0.3)",
    )
    parser.add_argument(
        "--snr",
        default="labels",
        choices=SNR_VARIANTS,
        help=(
            "SNR variant logged as snr.{kind}.block{i}: labels (sum |c| over noise, default), "
            "elements (sum |c|^2 over noise), per_cluster (each cluster over the noise in its "
            "columns)"
        ),
    )
    parser.add_argument(
        "--snr-form",
        default="ratio",
        choices=SNR_FORMS,
        help=(
            "ratio: mean numerator over mean denominator (default); mean: mean of per-node "
            "(per-cluster) ratios, zero-noise units excluded"
        ),
    )
    parser.add_argument(
        "--null-permutations",
        type=int,
        default=1000,
        help="random node-to-head permutations of the null model of Q (default: 1000)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the null model (default: 0)")
    parser.add_argument(
        "--over-checkpoints",
        action="store_true",
        help=(
            "also compute SNP matrices, SNR and Q on every checkpoint of the training run "
            "(epoch 0 included) with the SNP run's settings, logged with step = epoch"
        ),
    )
    parser.add_argument(
        "--gallery-nodes", type=int, default=4, help="nodes per layer in the gallery (default: 4)"
    )
    parser.add_argument("--device", default=None, help="torch device for --over-checkpoints")
    add_data_root(parser)
    add_tracking_uri(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from statmech_nn import order
    from statmech_nn.order.pipeline import summary

    result = order.for_run(
        args.run_id,
        order.OrderOptions(
            theta=args.theta,
            snr=args.snr,
            snr_form=args.snr_form,
            null_permutations=args.null_permutations,
            seed=args.seed,
            over_checkpoints=args.over_checkpoints,
            gallery_nodes=args.gallery_nodes,
            device=args.device,
        ),
        tracking_uri=args.tracking_uri,
        data_root=args.data_root,
        on_epoch=lambda epoch, metrics: print(f"epoch {epoch}: " + summary(metrics)),
    )
    print(summary(result.metrics))
    print(result.run_id)
    return 0
