"""``statmech-nn cooperation RUN_ID``: the subset curve A(n) and the single-node bound."""

from __future__ import annotations

import argparse

import xarray as xr

from statmech_nn.commands.options import (
    add_data_root,
    add_device,
    add_no_progress,
    add_tracking_uri,
)
from statmech_nn.cooperation_bound import DOMAINS
from statmech_nn.cooperation_run import FEATURES
from statmech_nn.errors import ConfigError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "cooperation",
        help="node cooperation: subset readout accuracy A(n) and the single-node label bound",
        description=(
            "For the sites of one kind of an SNP run, train readouts on random node subsets of "
            "each size n and report their test accuracy A(n) beside the random guess 1/L, the "
            "labels each subset recognises beside the union of its members' single-node labels, "
            "and per node the labels it can ever output on its own (docs/methods.md section 11). "
            "RUN_ID is an SNP child run or a training run (its newest SNP child is used). "
            "Metrics (coop.acc.{kind}.n{n}.block{i}, coop.labels/union/gain/new..., "
            "bound.labels/max/diag.{kind}.block{i}), figures and cooperation/cooperation.nc go to "
            "a child run 'cooperation' of the training run. Prints the child run id last."
        ),
    )
    parser.add_argument("run_id", metavar="RUN_ID", help="an SNP child run or a training run")
    parser.add_argument("--kind", default="ff", help="site kind of the SNP run (default: ff)")
    parser.add_argument(
        "--layers", default=None, help="comma-separated layers (default: all the SNP run has)"
    )
    parser.add_argument(
        "--sizes", default=None, help="comma-separated subset sizes (default: 1,2,4,...,all nodes)"
    )
    parser.add_argument("--draws", type=int, default=5, help="random subsets per size (default: 5)")
    parser.add_argument(
        "--within-head", action="store_true", help="draw each subset within one attention head"
    )
    parser.add_argument(
        "--theta",
        type=float,
        default=0.3,
        help="threshold in (0, 1) of recognised labels, strict M/max(M) > theta (default: 0.3)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the subsets (default: 0)")
    parser.add_argument(
        "--domain",
        default="real",
        choices=DOMAINS,
        help="inputs a node can take for the bound: real (default) or nonnegative",
    )
    parser.add_argument(
        "--features",
        default="auto",
        choices=FEATURES,
        help=(
            "what subset readouts see: tokens (activations, a fresh readout of the SNP run's "
            "kind) or pooled (one scalar per node); auto: pooled for mean and token runs, else "
            "tokens"
        ),
    )
    add_data_root(parser)
    add_device(parser)
    add_no_progress(parser)
    add_tracking_uri(parser)
    parser.set_defaults(func=run)


def int_list(flag: str, text: str | None) -> list[int] | None:
    """``"1,2,4"`` as ``[1, 2, 4]``; :class:`ConfigError` for anything else."""
    if text is None:
        return None
    try:
        values = [int(part) for part in text.split(",")]
    except ValueError:
        raise ConfigError(f"{flag} must be comma-separated integers, got {text!r}") from None
    return values


def summary_table(ds: xr.Dataset) -> str:
    """Per layer ``A(n)`` (mean over draws) for each size, the bound and ``|D_n|`` (means)."""
    sizes = [int(s) for s in ds["size"].values]
    head = ["layer", *(f"A({n})" for n in sizes), "bound", "|D_n|"]
    lines = ["  ".join(f"{h:>7}" for h in head)]
    for layer in ds["layer"].values:
        at = ds.sel(layer=layer)
        accs = [float(at["accuracy"].sel(size=n).mean()) for n in sizes]
        bound = float(at["output_labels"].mean())
        diag = float(at["diagonal_labels"].mean())
        cells = [str(int(layer)), *(f"{a:.3f}" for a in accs), f"{bound:.2f}", f"{diag:.2f}"]
        lines.append("  ".join(f"{c:>7}" for c in cells))
    lines.append(f"random guess 1/L = {float(ds.attrs['chance']):.3f}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from statmech_nn.cooperation_run import for_run

    result = for_run(
        args.run_id,
        kind=args.kind,
        layers=int_list("--layers", args.layers),
        sizes=int_list("--sizes", args.sizes),
        draws=args.draws,
        within_head=args.within_head,
        theta=args.theta,
        seed=args.seed,
        device=args.device,
        tracking_uri=args.tracking_uri,
        domain=args.domain,
        features=args.features,
        progress=not args.no_progress,
        data_root=args.data_root,
    )
    print(summary_table(result.dataset))
    print(result.run_id)
    return 0
