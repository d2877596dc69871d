"""``statmech-nn scaling RUN_ID --labels 2,4,6``: SNR and error against the number of labels."""

from __future__ import annotations

import argparse

from statmech_nn.commands import options


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "scaling",
        help="SNR and readout error against the number of labels K (random label subsets)",
        description=(
            "For each K in --labels, draw --draws seeded random K-label subsets; on each, train a "
            "readout of one site of the training run's last checkpoint (train split restricted "
            "to those labels, relabelled 0..K-1) and compute its single-node matrices on the "
            "test split. Logs error, SNR and cluster size against K (step = K) and their linear "
            "fits (scipy.stats.linregress: slope, intercept, R^2) to a child run 'scaling' "
            "(methods.md section 7). RUN_ID is a training run or one of its child runs. Prints "
            "the child run id on the last line."
        ),
    )
    parser.add_argument("run_id", metavar="RUN_ID", help="a training run (or one of its children)")
    parser.add_argument(
        "--labels",
        required=True,
        help="comma-separated label counts K, each between 2 and the number of labels",
    )
    parser.add_argument("--draws", type=int, default=3, help="random subsets per K (default: 3)")
    parser.add_argument(
        "--site", default=None, help="site to read, e.g. block6.ff (default: the last ff site)"
    )
    parser.add_argument("--epoch", type=int, default=None, help="checkpoint (default: last)")
    parser.add_argument("--theta", type=float, default=0.3, help="threshold (default: 0.3)")
    parser.add_argument(
        "--snr",
        default="labels",
        choices=("labels", "elements", "per_cluster"),
        help="SNR variant (default: labels)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of subsets and readouts")
    options.add_readout(parser, epochs_help="readout epochs (10)", batch_help="batch size (128)")
    parser.add_argument(
        "--limit-train", type=int, default=None, help="train on at most N samples per subset"
    )
    options.add_data_root(parser)
    options.add_device(parser)
    options.add_tracking_uri(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from statmech_nn import scaling

    ks = scaling.parse_ks(args.labels)
    options.sample_limits(args)
    snp_options = {**options.readout_options(args), "device": args.device}
    child_id, result = scaling.for_run(
        args.run_id,
        ks,
        draws=args.draws,
        site=args.site,
        epoch=args.epoch,
        theta=args.theta,
        snr_variant=args.snr,
        seed=args.seed,
        limit_train=args.limit_train,
        snp_options=snp_options,
        tracking_uri=args.tracking_uri,
        data_root=args.data_root,
    )
    for i, k in enumerate(result["K"].values):
        print(
            f"K={int(k)}: error={float(result['error'].isel(K=i).mean()):.3f} "
            f"snr={float(result['snr'].isel(K=i).mean()):.3g}"
        )
    for name in ("error", "snr"):
        print(
            f"{name} ~ {float(result[f'{name}_slope']):.4g} K + "
            f"{float(result[f'{name}_intercept']):.4g} (R^2 = {float(result[f'{name}_r2']):.3f})"
        )
    print(child_id)
    return 0
