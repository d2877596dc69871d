"""``statmech-nn snp RUN_ID``: single-node matrices of a trained run, logged in a child run.

``statmech-nn snp --model NAME --weights FILE --dataset DATA`` first records a model trained
elsewhere as a new run (:func:`statmech_nn.foreign.runs.import_run`), then analyses that run.
"""

from __future__ import annotations

import argparse
from typing import Any

from statmech_nn.commands import options
from statmech_nn.errors import ConfigError
from statmech_nn.snp.tokens import TOKEN_READOUT


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "snp",
        help="compute the single-node (SNP) matrices of a training run's checkpoint",
        description=(
            "Load the checkpoint of training run RUN_ID, train a linear readout per site on the "
            "frozen network (train split), then compute every node's labels x labels matrix on "
            "the test split (docs/methods.md sections 3-4). The tensor is logged in a child run "
            "'snp' nested under the training run: artifact snp/snp.nc, metrics "
            "acc.readout.{kind}.{block_i|conv_i}, every choice as a param. Prints the child run "
            "id on the last line; load the tensor with statmech_nn.load_snp(RUN_ID). A model "
            "trained elsewhere: give --model NAME --weights FILE --dataset DATA instead of "
            "RUN_ID; it is first logged as a new run (its provenance: model, weights path and "
            "SHA-256) whose id is printed before the child run's, for order and study. A run "
            "pre-trained as a masked language model (train --recipe mlm-cpu) takes --readout "
            "token: the labels are its --tokens K most frequent masked tokens, one readout per "
            "masked position (docs/methods.md section 10)."
        ),
    )
    parser.add_argument(
        "run_id", metavar="RUN_ID", nargs="?", default=None, help="the MLflow id of a training run"
    )
    _add_foreign(parser.add_argument_group("a model trained elsewhere (instead of RUN_ID)"))
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
            "names (block3.mha: the per-head context of block 3, on ours and on supported "
            "Hugging Face / timm / torchvision transformers), or module paths with options "
            "(blocks.1.attn.proj:input:heads=4, the input of an attention's output projection; "
            "heads on a block output or an MLP output are refused). Default: all"
        ),
    )
    options.add_readout(
        parser,
        epochs_help="epochs of readout training (default: 10; the papers used 200 on CIFAR)",
        batch_help="batch size of readout training and evaluation (default: 128)",
        extra=(TOKEN_READOUT,),
        readout_help=(
            "readout trained on each site (default: seqpool); token: token-level SNP of a run "
            "pre-trained as a masked language model, one readout per masked position over the "
            "--tokens most frequent masked tokens (docs/methods.md section 10)"
        ),
    )
    parser.add_argument(
        "--tokens",
        metavar="K",
        type=int,
        default=None,
        help="--readout token: the K most frequent masked target tokens are the labels "
        "(default: 100)",
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
    options.add_data_root(parser)
    options.add_device(parser)
    options.add_tracking_uri(parser)
    options.add_no_progress(parser)
    parser.set_defaults(func=run)


def _add_foreign(group: Any) -> None:
    from statmech_nn.commands.train import _key_value

    group.add_argument(
        "--model",
        metavar="NAME",
        default=None,
        help=(
            "registry name of the model (hf:NAME, timm:NAME, torchvision:NAME or ours; "
            "hf:PATH for a local Hugging Face directory)"
        ),
    )
    group.add_argument(
        "--weights",
        metavar="FILE",
        default=None,
        help=(
            "its weights: a .safetensors or torch state dict file (read without pickle), or a "
            "local Hugging Face directory for hf: models"
        ),
    )
    group.add_argument("--dataset", default=None, help="the dataset it was trained on")
    group.add_argument(
        "--data-option",
        type=_key_value,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a dataset option, e.g. max_length=32 for text sets (repeatable)",
    )
    group.add_argument("--img-size", type=int, default=None, help="image size the model takes")
    group.add_argument(
        "--experiment", default="statmech-nn", help="MLflow experiment of the new run"
    )


def _foreign_run(args: argparse.Namespace) -> str | None:
    """The id of the new run holding ``--model``/``--weights``, or None for a RUN_ID."""
    given = args.model is not None or args.weights is not None
    if args.run_id is not None and given:
        raise ConfigError("give either RUN_ID or --model/--weights, not both")
    if args.run_id is not None:
        return None
    if args.model is None:
        raise ConfigError("give a training RUN_ID, or --model NAME (with --weights FILE)")
    if args.dataset is None:
        raise ConfigError("--model needs --dataset: the data the model was trained on")
    options.at_least("--img-size", args.img_size, 1)
    from statmech_nn.foreign.runs import import_run

    return import_run(
        args.model,
        args.dataset,
        weights=args.weights,
        data_root=args.data_root,
        dataset_options=dict(args.data_option),
        img_size=args.img_size,
        experiment=args.experiment,
        tracking_uri=args.tracking_uri,
    )


def run(args: argparse.Namespace) -> int:
    from statmech_nn import snp

    readout = options.readout_options(args, minimum_epochs=1)
    options.at_least("--chunk-size", args.chunk_size, 1)
    options.at_least("--tokens", args.tokens, 1)
    if args.tokens is not None and args.readout != TOKEN_READOUT:
        raise ConfigError(f"--tokens K is for --readout token, not --readout {args.readout}")
    options.sample_limits(args)
    imported = _foreign_run(args)
    if imported is not None:
        print(f"model run {imported}")
    child_id, ds = snp.compute_for_run(
        imported or args.run_id,
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
        tokens=args.tokens,
        data_root=args.data_root,
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
