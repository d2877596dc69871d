"""``statmech-nn report RUN_ID``: one self-contained HTML file of a run and its analyses."""

from __future__ import annotations

import argparse

from statmech_nn.commands import add_tracking_uri


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "report",
        help="write a self-contained HTML report of a training run and its analyses",
        description=(
            "Collect a training run's configuration and curves and every analysis nested under "
            "it (SNP readout accuracy, order parameters and figures, Q over training, label "
            "scaling, ANDC studies) into one HTML file with embedded figures; also logged to "
            "the run as report/report.html. Prints the file path on the last line."
        ),
    )
    parser.add_argument("run_id", metavar="RUN_ID", help="the training run")
    parser.add_argument("--out", default=None, help="output file (default: reports/RUN_ID.html)")
    parser.add_argument("--no-log", action="store_true", help="do not log it to MLflow")
    add_tracking_uri(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from statmech_nn.report import write_report

    path = write_report(args.run_id, args.out, args.tracking_uri, log=not args.no_log)
    print(path.resolve())
    return 0
