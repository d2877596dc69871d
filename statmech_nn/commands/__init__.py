"""One module per ``statmech-nn`` command; options they share are added here."""

from __future__ import annotations

import argparse

TRACKING_URI_HELP = (
    "MLflow tracking store or server (default: $MLFLOW_TRACKING_URI, else "
    "sqlite:///mlruns/mlflow.db in the working directory)"
)


def add_tracking_uri(parser: argparse.ArgumentParser) -> None:
    """The ``--tracking-uri`` option every command that reads or writes MLflow takes."""
    parser.add_argument("--tracking-uri", metavar="URI", default=None, help=TRACKING_URI_HELP)
