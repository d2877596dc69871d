"""Options several commands share, and the checks of their values before anything runs.

A value no analysis can use (``--chunk-size 0``, ``--draws 0``, ``--workers -1``) is refused
here with one :class:`~statmech_nn.errors.ConfigError` line, before any MLflow run or Optuna
study is created.
"""

from __future__ import annotations

import argparse
import math
import re
from typing import Any

from statmech_nn.errors import ConfigError
from statmech_nn.readout import READOUTS
from statmech_nn.readout.config import CACHE_DTYPES, CACHE_MODES
from statmech_nn.snp import SILENCINGS

TRACKING_URI_HELP = (
    "MLflow tracking store or server (default: $MLFLOW_TRACKING_URI, else "
    "sqlite:///mlruns/mlflow.db in the working directory)"
)


def add_tracking_uri(parser: argparse.ArgumentParser | Any) -> None:
    """The ``--tracking-uri`` option every command that reads or writes MLflow takes."""
    parser.add_argument("--tracking-uri", metavar="URI", default=None, help=TRACKING_URI_HELP)


DATA_ROOT_HELP = (
    "folder that holds the datasets (default: $STATMECH_DATA, else ./data); never the folder a "
    "run's stored config names, and nothing is downloaded (statmech-nn datasets --download does)"
)


def add_data_root(parser: argparse.ArgumentParser | Any) -> None:
    """``--data-root``: where an analysis reads a run's data (never where its config says)."""
    parser.add_argument("--data-root", metavar="DIR", default=None, help=DATA_ROOT_HELP)


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


def add_readout(
    parser: argparse.ArgumentParser,
    *,
    epochs_help: str,
    batch_help: str,
    extra: tuple[str, ...] = (),
    readout_help: str = "readout trained on each site (default: seqpool)",
) -> None:
    """``--readout``, ``--silencing``, ``--readout-epochs``, ``--readout-lr``, ``--batch-size``.

    ``extra``: readouts the command offers beyond :data:`READOUTS` (``snp``: ``token``).
    """
    parser.add_argument(
        "--readout",
        default="seqpool",
        choices=(*READOUTS, *extra),
        help=readout_help,
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
    add_readout_cache(parser)


def add_readout_cache(parser: argparse.ArgumentParser) -> None:
    """How readouts train: ``--cache``, ``--cache-dir``, ``--cache-budget``, ``--cache-dtype``,
    ``--compile``, ``--deterministic`` (values are checked by :func:`readout_cache_options`)."""
    parser.add_argument(
        "--cache",
        default="memory",
        metavar="{" + ",".join(CACHE_MODES) + "}",
        help=(
            "train every readout epoch on site activations computed once, in memory (default; "
            "on the GPU when training there) or memory-mapped on disk; none reruns the backbone "
            "every batch"
        ),
    )
    parser.add_argument(
        "--cache-dir", metavar="D", default=None, help="folder of the disk cache (--cache disk)"
    )
    parser.add_argument(
        "--cache-budget",
        metavar="SIZE",
        default=None,
        help="bytes the cache may take, e.g. 4G or 500M (default: half of what is free)",
    )
    parser.add_argument(
        "--cache-dtype",
        default="bf16",
        metavar="{" + ",".join(CACHE_DTYPES) + "}",
        help="dtype of the cached activations (default: bf16; fp32 equals --cache none)",
    )
    parser.add_argument(
        "--compile", action="store_true", help="torch.compile the cached readout step"
    )
    parser.add_argument(
        "--deterministic",
        action="store_true",
        help="deterministic kernels for the readouts (slower on GPU)",
    )


_SIZE_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*$", re.IGNORECASE)


def parse_size(flag: str, text: str | None) -> int | None:
    """Bytes of ``4G`` / ``500M`` / ``1.5G`` / ``123456`` (binary units); ``None`` passes."""
    if text is None:
        return None
    match = _SIZE_RE.match(str(text))
    size = float(match.group(1)) * _SIZE_UNITS[match.group(2).upper()] if match else 0
    if not match or int(size) < 1:
        raise ConfigError(f"{flag} must be a positive size such as 4G or 500M, got {text!r}")
    return int(size)


def _one_of(flag: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{flag} must be one of {', '.join(choices)}, got {value!r}")


def readout_cache_options(args: argparse.Namespace) -> dict[str, Any]:
    """The cache / compile / determinism flags as :class:`ReadoutConfig` fields, checked."""
    _one_of("--cache", args.cache, CACHE_MODES)
    _one_of("--cache-dtype", args.cache_dtype, CACHE_DTYPES)
    if args.cache_dir is not None and args.cache != "disk":
        raise ConfigError(f"--cache-dir is for --cache disk, not --cache {args.cache}")
    if args.cache == "none" and args.compile:
        raise ConfigError("--compile compiles the cached step: not with --cache none")
    return {
        "cache": args.cache,
        "cache_dtype": args.cache_dtype,
        "cache_dir": args.cache_dir,
        "cache_budget": parse_size("--cache-budget", args.cache_budget),
        "compile": bool(args.compile),
        "deterministic": bool(args.deterministic),
    }


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
        "readout_options": {"lr": args.readout_lr, **readout_cache_options(args)},
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
