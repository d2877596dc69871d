"""The ``statmech-nn`` command: a thin dispatcher over ``statmech_nn.commands.*``.

Each command module defines ``register(subparsers)``, which adds its parser and sets
``func(args) -> int``. Errors a user can fix print one line and exit non-zero; ``--debug`` shows
the traceback. ``-v`` / ``--quiet`` / ``--log-file`` (before or after the command) set what the
``statmech_nn`` loggers show (:mod:`statmech_nn.logs`).
"""

from __future__ import annotations

import argparse
import errno
import importlib
import sys

from statmech_nn import __version__, logs
from statmech_nn.errors import StatmechError

COMMANDS = (
    "demo",
    "findings",
    "train",
    "snp",
    "order",
    "cooperation",
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
    add_output_flags(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"statmech_nn.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"statmech_nn.commands.{name}":
                continue
            raise
        module.register(sub)
    for command in sub.choices.values():
        add_output_flags(command.add_argument_group("output"), suppress=True)
    return parser


def add_output_flags(parser: argparse._ActionsContainer, suppress: bool = False) -> None:
    """``-v`` / ``--quiet`` / ``--log-file``: accepted before the command and after it.

    The command's copies (``suppress``) have no defaults, so they never undo a flag given before.
    """

    def default(value: object) -> object:
        return argparse.SUPPRESS if suppress else value

    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=default(0),
        help="more detail: debug lines, and the libraries' own messages (Optuna, MLflow)",
    )
    parser.add_argument(
        "--quiet",
        action="store_true",
        default=default(False),
        help="only warnings and errors on stderr, no progress bars",
    )
    parser.add_argument(
        "--log-file",
        metavar="FILE",
        default=default(None),
        help="also write the progress lines, with timestamps, to FILE",
    )


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    parser = build_parser()
    args = parser.parse_args([a for a in argv if a != "--debug"])
    args.debug = debug
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        logs.configure(args.verbose, args.quiet, args.log_file)
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        message = error_line(exc, getattr(args, "tracking_uri", None))
        if message is None or args.debug:
            raise
        print(f"statmech-nn {args.command}: error: {message}", file=sys.stderr)
        return 2


# OS errors a user fixes (permissions, a read-only or full disk), not bugs: one line each.
_OS_ERRNOS = {
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only file system",
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
}
_SQLITE_HINTS = ("readonly database", "disk is full", "unable to open database file")


def error_line(exc: BaseException, tracking_uri: str | None = None) -> str | None:
    """The one line the CLI prints for ``exc``, or ``None`` when it is a bug (traceback).

    :class:`StatmechError` and a missing file print their message; permission, read-only and
    full-disk errors (also when a library wrapped them, e.g. SQLite under MLflow) name the path.
    """
    if isinstance(exc, StatmechError | FileNotFoundError):
        return " ".join(str(exc).split()) or type(exc).__name__
    for cause in _chain(exc):
        if isinstance(cause, OSError) and cause.errno in _OS_ERRNOS:
            where = cause.filename or cause.filename2
            what = _OS_ERRNOS[cause.errno]
            return f"{what}: {where}" if where else f"{what} ({cause.strerror or cause})"
        text = str(cause).lower()
        if type(cause).__name__ == "OperationalError" and any(h in text for h in _SQLITE_HINTS):
            hint = next(h for h in _SQLITE_HINTS if h in text)
            return f"the tracking store cannot be written ({hint}): {_store_hint(tracking_uri)}"
    return None


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def _store_hint(tracking_uri: str | None) -> str:
    """Where the tracking store is (its path for SQLite), for the read-only / full-disk line."""
    from statmech_nn import tracking

    try:
        uri = tracking.resolve_uri(tracking_uri)
    except Exception:  # noqa: BLE001 - only a hint in an error message
        return "the --tracking-uri folder and its disk"
    return uri.removeprefix("sqlite:///")


if __name__ == "__main__":
    raise SystemExit(main())
