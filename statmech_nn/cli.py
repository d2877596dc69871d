"""The ``statmech-nn`` command: a thin dispatcher over ``statmech_nn.commands.*``.

Each command module defines ``register(subparsers)``, which adds its parser and sets
``func(args) -> int``. Errors a user can fix print one line and exit non-zero; ``--debug`` shows
the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from statmech_nn import __version__
from statmech_nn.errors import StatmechError

COMMANDS = (
    "demo",
    "train",
    "snp",
    "order",
    "scaling",
    "study",
    "prune",
    "query",
    "report",
    "models",
    "datasets",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="statmech-nn",
        description=(
            "Statistical mechanics of trained networks: train CCTs and VGGs, compute single-node "
            "(SNP) matrices, order parameters and ANDC pruning, all tracked in MLflow."
        ),
    )
    parser.add_argument("--version", action="version", version=f"statmech-nn {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"statmech_nn.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"statmech_nn.commands.{name}":
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    debug = "--debug" in argv
    parser = build_parser()
    args = parser.parse_args([a for a in argv if a != "--debug"])
    args.debug = debug
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (StatmechError, FileNotFoundError) as exc:
        if args.debug:
            raise
        print(f"statmech-nn {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
