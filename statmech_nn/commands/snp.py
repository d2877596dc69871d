"""``statmech-nn snp RUN_ID``: single-node matrices of a trained run, logged in a child run."""

from __future__ import annotations

import argparse

from statmech_nn.commands import options


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "snp",
        help="compute the single-node (SNP) matrices of a training run's checkpoint",
        description=(
            "Load the checkpoint of training run RUN_ID, train a linear readout per site on the "
            "frozen network (train split), then compute every node's labels x labels matrix on "
            "the test split (METHODS.md sections 3-4). The tensor is logged in a child run "
            "'snp' nested under the training run: artifact snp/snp.nc, metrics "
            "acc.readout.{kind}.{block_i|conv_i}, every choice as a param. Prints the child run "
            "id on the last line; load the tensor with statmech_nn.load_snp(RUN_ID)."
        ),
    )
    parser.add_argument("run_id", metavar="RUN_ID", help="the MLflow id of a training run")
    parser.add_argument(
        "--epoch",
        type=int,
        default=None,
        help="checkpoint epoch to analyse (default: the last one; 0 is the untrained network)",
    )
    parser.add_argument(
        "--sites",
        default="all",
        help=(
            "sites to read, comma-separated: 'all', kinds (mha,ff,ff_hidden,attn_out,conv), site "
            "names (block3.mha), or module paths with options (encoder.layers.1:heads=4). "
            "Default: all"
        ),
    )
    options.add_readout(
        parser,
        epochs_help="epochs of readout training (default: 10; the papers used 200 on CIFAR)",
        batch_help="batch size of readout training and evaluation (default: 128)",
    )
    parser.add_argument(
        "--chunk-size",
        type=int,
        default=128,
        help="samples per accumulation step of the matrices; bounds memory (default: 128)",
    )
    parser.add_argument(
        "--split",
        default="test",
        choices=("test", "val", "train"),
        help="split the matrices are averaged over (default: test)",
    )
    parser.add_argument("--seed", type=int, default=0, help="readout seed (default: 0)")
    parser.add_argument(
        "--limit-train",
        type=int,
        default=None,
        help="train readouts on a seeded random subset of this many samples (quick looks)",
    )
    parser.add_argument(
        "--limit-eval",
        type=int,
        default=None,
        help="compute the matrices on a seeded random subset of this many samples",
    )
    options.add_device(parser)
    options.add_tracking_uri(parser)
    options.add_no_progress(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from statmech_nn import snp

    readout = options.readout_options(args, minimum_epochs=1)
    options.at_least("--chunk-size", args.chunk_size, 1)
    options.sample_limits(args)
    child_id, ds = snp.compute_for_run(
        args.run_id,
        epoch=args.epoch,
        sites=args.sites,
        chunk_size=args.chunk_size,
        split=args.split,
        seed=args.seed,
        device=args.device,
        progress=not args.no_progress,
        tracking_uri=args.tracking_uri,
        limit_train=args.limit_train,
        limit_eval=args.limit_eval,
        **readout,
    )
    for line in snp_summary(ds):
        print(line)
    print(child_id)
    return 0


def snp_summary(ds) -> list[str]:
    """One line per site kind: the readout accuracy of each layer."""
    lines = []
    for kind in ds.attrs["kinds"]:
        accs = ", ".join(
            f"{int(layer)}: {float(acc):.3f}"
            for layer, acc in zip(ds.layer.values, ds[f"acc_{kind}"].values, strict=True)
            if acc == acc
        )
        lines.append(f"readout accuracy {kind} by layer: {accs}")
    return lines
