"""What the ``statmech-nn`` command shows while it works: the ``statmech_nn`` loggers' output.

The toolkit's modules log through the ``statmech_nn`` logger hierarchy (epoch lines, study
created or resumed, cache sizes); :func:`configure` sends them to stderr (INFO by default,
WARNING with ``--quiet``, DEBUG with ``-v``), plain for a terminal and with timestamps when
stderr is a file (nohup, SLURM, CI), and optionally to a log file as well. Libraries' chatter
(Optuna's "A new study created", MLflow's artifact download bars, database migrations) stays
out unless ``-v``.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import IO

ROOT = "statmech_nn"
LIBRARIES = ("optuna", "mlflow", "alembic", "huey", "sqlalchemy.engine")
"""Loggers of libraries kept at WARNING unless ``-v``."""

PLAIN_FORMAT = "%(message)s"
STAMPED_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
STAMP = "%Y-%m-%d %H:%M:%S"

_OURS = "_statmech_nn_handler"  # marks the handlers configure() installed, to replace them


class _CurrentStderr(logging.StreamHandler):
    """A stream handler that writes to whatever ``sys.stderr`` is when a record is emitted."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> IO[str]:
        return sys.stderr

    @stream.setter
    def stream(self, value: IO[str]) -> None:
        pass


class _TerminalFormatter(logging.Formatter):
    """The message alone for INFO and below; ``warning: ...`` / ``error: ...`` above."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if record.levelno >= logging.WARNING:
            return f"{record.levelname.lower()}: {text}"
        return text


def console_level(verbose: int = 0, quiet: bool = False) -> int:
    """The level of the ``statmech_nn`` loggers on stderr: WARNING, INFO or DEBUG."""
    if quiet:
        return logging.WARNING
    return logging.DEBUG if verbose > 0 else logging.INFO


def _is_terminal(stream: IO[str]) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def configure(
    verbose: int = 0, quiet: bool = False, log_file: str | os.PathLike | None = None
) -> None:
    """Route the ``statmech_nn`` loggers to stderr (and ``log_file``); quiet the libraries.

    Safe to call again (each call replaces the handlers of the previous one). The log file gets
    timestamped lines at INFO (DEBUG with ``verbose``) even with ``quiet``; ``quiet`` also hides
    the progress bars.
    """
    root = logging.getLogger(ROOT)
    for handler in [h for h in root.handlers if getattr(h, _OURS, False)]:
        root.removeHandler(handler)
        handler.close()
    level = console_level(verbose, quiet)
    console = _CurrentStderr()
    console.setLevel(level)
    if _is_terminal(sys.stderr):
        console.setFormatter(_TerminalFormatter(PLAIN_FORMAT))
    else:
        console.setFormatter(logging.Formatter(STAMPED_FORMAT, STAMP))
    handlers: list[logging.Handler] = [console]
    if log_file is not None:
        path = Path(log_file).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        to_file = logging.FileHandler(path, encoding="utf-8")
        to_file.setLevel(min(level, logging.INFO))
        to_file.setFormatter(logging.Formatter(STAMPED_FORMAT, STAMP))
        handlers.append(to_file)
    for handler in handlers:
        setattr(handler, _OURS, True)
        root.addHandler(handler)
    root.setLevel(min(h.level for h in handlers))
    if quiet:
        os.environ.setdefault("TQDM_DISABLE", "1")
    quiet_libraries(verbose > 0)


_library_level: int | None = None
"""The level :func:`quiet_libraries` chose for the libraries' loggers; ``None`` until called
(a user of the Python API keeps the libraries' own levels)."""


def quiet_libraries(verbose: bool = False) -> None:
    """Libraries at WARNING (INFO with ``verbose``); no MLflow artifact download bars.

    ``MLFLOW_LOGGING_LEVEL`` is what MLflow reads when it is imported (a user's value is kept);
    the loggers already created are set directly.
    """
    global _library_level
    _library_level = logging.INFO if verbose else logging.WARNING
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", logging.getLevelName(_library_level))
    if not verbose:
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    apply_library_levels()


def apply_library_levels() -> None:
    """Set the libraries' loggers to the level :func:`quiet_libraries` chose, if it was called.

    Called again where a library is imported that sets its own level on import: Optuna's
    first logger puts ``optuna`` at INFO, so a study created after ``configure`` printed
    "A new study created" (:mod:`statmech_nn.studies` calls this once Optuna is imported).
    """
    if _library_level is None:
        return
    for name in LIBRARIES:
        if name == "sqlalchemy.engine" and _library_level < logging.WARNING:
            continue  # SQL echo is never wanted, not even with -v
        logging.getLogger(name).setLevel(_library_level)
