"""``statmech-nn query``: order parameters across MLflow runs as a table, CSV or netCDF."""

from __future__ import annotations

import argparse

from statmech_nn.commands import add_tracking_uri


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "query",
        help="order parameters (SNR, Q, accuracy...) of many MLflow runs by layer",
        description=(
            "Collect the metrics of MLflow runs (all experiments unless --experiment) into one "
            "xarray Dataset with dims (run, layer): a metric {family}.{...}.block{i} becomes the "
            "variable {family}_{...} at layer i (order.Q.block5 -> order_Q), params become "
            "typed coordinates param_{name} (numbers as numbers, NaN where missing). Training "
            "and analysis runs only; --trials adds the run of every study trial. Prints a "
            "table; --csv and --netcdf write it. In Python: statmech_nn.query.order_parameters()."
        ),
    )
    parser.add_argument("--experiment", default=None, help="experiment name or id (default: all)")
    parser.add_argument(
        "--filter",
        default="",
        help=(
            "MLflow search filter, e.g. \"tags.`statmech_nn.kind` = 'order'\" or "
            '"metrics.`order.Q.block6` > 0.5"'
        ),
    )
    parser.add_argument(
        "--trials",
        action="store_true",
        help="also the runs of study trials (one per Optuna trial; left out by default)",
    )
    parser.add_argument("--csv", default=None, metavar="PATH", help="write a long-format CSV")
    parser.add_argument("--netcdf", default=None, metavar="PATH", help="write a netCDF file")
    add_tracking_uri(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from statmech_nn import query

    ds = query.order_parameters(args.experiment, args.filter, args.tracking_uri, trials=args.trials)
    if ds.sizes["run"] == 0:
        print("no runs match")
        return 0
    print(query.to_table(ds))
    if args.csv:
        query.write_csv(ds, args.csv)
        print(f"wrote {args.csv}")
    if args.netcdf:
        query.write_netcdf(ds, args.netcdf)
        print(f"wrote {args.netcdf}")
    return 0
