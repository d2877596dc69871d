"""Options several commands share, and the checks of their values before anything runs.

A value no analysis can use (``--chunk-size 0``, ``--draws 0``, ``--workers -1``) is refused
here with one :class:`~statmech_nn.errors.ConfigError` line, before any MLflow run or Optuna
study is created.
"""

from __future__ import annotations

import argparse
import math
from typing import Any

from statmech_nn.errors import ConfigError
from statmech_nn.readout import READOUTS
from statmech_nn.snp import SILENCINGS

TRACKING_URI_HELP = (
    "MLflow tracking store or server (default: $MLFLOW_TRACKING_URI, else "
    "sqlite:///mlruns/mlflow.db in the working directory)"
)


def add_tracking_uri(parser: argparse.ArgumentParser | Any) -> None:
    """The ``--tracking-uri`` option every command that reads or writes MLflow takes."""
    parser.add_argument("--tracking-uri", metavar="URI", default=None, help=TRACKING_URI_HELP)


def add_device(parser: argparse.ArgumentParser, help: str | None = None) -> None:
    """``--device``: a torch device name (default: cuda if available)."""
    parser.add_argument(
        "--device",
        default=None,
        help=help or "torch device, e.g. cpu or cuda (default: cuda if any)",
    )


def add_no_progress(parser: argparse.ArgumentParser) -> None:
    """``--no-progress``: hide the progress bars."""
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")


def add_readout(parser: argparse.ArgumentParser, *, epochs_help: str, batch_help: str) -> None:
    """``--readout``, ``--silencing``, ``--readout-epochs``, ``--readout-lr``, ``--batch-size``."""
    parser.add_argument(
        "--readout",
        default="seqpool",
        choices=READOUTS,
        help="readout trained on each site (default: seqpool)",
    )
    parser.add_argument(
        "--silencing",
        default="pre_pool",
        choices=SILENCINGS,
        help=(
            "seqpool only: silence the other nodes before pooling (pre_pool, default) or after "
            "it (post_pool, fields add up to the logits)"
        ),
    )
    parser.add_argument("--readout-epochs", type=int, default=10, help=epochs_help)
    parser.add_argument(
        "--readout-lr", type=float, default=0.01, help="readout SGD learning rate (default: 0.01)"
    )
    parser.add_argument("--batch-size", type=int, default=128, help=batch_help)


def readout_options(args: argparse.Namespace, minimum_epochs: int = 0) -> dict[str, Any]:
    """The readout flags as keyword arguments of ``snp.compute``, checked first."""
    at_least("--readout-epochs", args.readout_epochs, minimum_epochs)
    at_least("--batch-size", args.batch_size, 1)
    positive_float("--readout-lr", args.readout_lr)
    return {
        "readout": args.readout,
        "silencing": args.silencing,
        "readout_epochs": args.readout_epochs,
        "batch_size": args.batch_size,
        "readout_options": {"lr": args.readout_lr},
    }


def at_least(flag: str, value: int | None, minimum: int) -> None:
    """Refuse ``value < minimum`` (``None`` means not given and passes)."""
    if value is not None and value < minimum:
        raise ConfigError(f"{flag} must be >= {minimum}, got {value}")


def positive_float(flag: str, value: float | None) -> None:
    """Refuse a non-finite or non-positive ``value`` (``None`` passes)."""
    if value is not None and not (math.isfinite(value) and value > 0):
        raise ConfigError(f"{flag} must be a positive number, got {value}")


def sample_limits(args: argparse.Namespace) -> None:
    """``--limit-train`` / ``--limit-eval``, where the command has them, must be >= 1."""
    for name in ("limit_train", "limit_eval"):
        at_least("--" + name.replace("_", "-"), getattr(args, name, None), 1)
