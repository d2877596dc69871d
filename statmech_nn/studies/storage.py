"""Optuna storages and studies: storage URLs, opening them, creating or resuming a study.

By default an Optuna journal file ``mlruns/optuna.journal`` (``JournalStorage(JournalFileBackend)``:
safe for processes on one machine, never the MLflow SQLite file); any SQLAlchemy RDB URL
(``postgresql://...``, ``sqlite:///other.db``) for workers on many machines, opened with a
heartbeat (:class:`Heartbeat`) and :class:`optuna.storages.RetryHeartbeatStaleTrialCallback`, so
the trial of a worker that died is failed and re-queued by the next worker that starts a trial.
A study resumed by name must match its directions and recorded attributes (:func:`check_study`).
Study names follow one rule (:func:`andc_study_name`), so ``study andc RUN`` run twice (by hand,
or after the demo) adds to one study; creating or resuming one is logged (``created study X in``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import optuna

from statmech_nn.errors import ConfigError, StatmechError

log = logging.getLogger(__name__)

DEFAULT_JOURNAL = Path("mlruns") / "optuna.journal"
RDB_SCHEMES = ("sqlite", "postgresql", "postgres", "mysql", "mariadb", "oracle", "mssql")


class StorageError(ConfigError):
    """An Optuna storage URL that is not supported or cannot be opened."""


class StudyMismatchError(StatmechError):
    """A study name that already exists with other objectives or settings."""


@dataclass(frozen=True)
class Heartbeat:
    """Heartbeat of RDB storages: a RUNNING trial silent for ``grace_period`` s is failed."""

    interval: int = 60
    grace_period: int = 120
    max_retry: int | None = 3


def normalize_storage(url: str | os.PathLike | None) -> str:
    """A storage URL workers can reopen from any working directory.

    ``None`` -> ``journal:`` + absolute ``mlruns/optuna.journal``; a plain path (no ``://``) ->
    ``journal:`` + that file, absolute; ``sqlite:///relative.db`` is made absolute; other RDB
    URLs are kept. Unknown schemes raise :class:`StorageError`.
    """
    if url is None or str(url) == "":
        return "journal:" + str((Path.cwd() / DEFAULT_JOURNAL).resolve())
    text = str(url)
    if text.startswith("journal:"):
        path = Path(text.removeprefix("journal:").removeprefix("//"))
        return "journal:" + str(path.expanduser().resolve())
    if "://" not in text:
        return "journal:" + str(Path(text).expanduser().resolve())
    scheme = urlparse(text).scheme.lower()
    base = scheme.split("+", 1)[0]
    if base not in RDB_SCHEMES:
        raise StorageError(
            f"unsupported Optuna storage {_redact(text)!r} (scheme {scheme!r}); use a journal "
            "file path (default mlruns/optuna.journal) or an RDB URL such as "
            "postgresql://user@host:5432/db or sqlite:///optuna.db"
        )
    if base == "sqlite":
        rest = text.split(":///", 1)[1] if ":///" in text else ""
        if not rest or rest == ":memory:":
            raise StorageError(
                f"Optuna storage {text!r} names no database file (an in-memory SQLite database "
                "is lost when the command ends and not shared by workers); use e.g. "
                "sqlite:///optuna.db"
            )
        if not rest.startswith("/"):
            return f"{text.split(':///', 1)[0]}:///{(Path.cwd() / rest).resolve()}"
    return text


def storage_file(url: str) -> Path | None:
    """The local file a normalised journal or SQLite storage URL keeps its studies in, else None."""
    if url.startswith("journal:"):
        return Path(url.removeprefix("journal:"))
    if urlparse(url).scheme.split("+", 1)[0] == "sqlite" and ":///" in url:
        return Path(url.split(":///", 1)[1])
    return None


def _redact(url: str) -> str:
    parsed = urlparse(url)
    if parsed.password:
        return url.replace(f":{parsed.password}@", ":***@")
    return url


def _is_mlflow_sqlite(path: Path) -> bool:
    if not path.is_file() or path.stat().st_size == 0:
        return False
    import sqlite3

    with open(path, "rb") as fh:
        if fh.read(16) != b"SQLite format 3\x00":
            return False
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as con:
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master")}
    except sqlite3.Error:
        return False
    return {"experiments", "runs"} <= tables


def _postgres_driver_url(url: str) -> str:
    """``postgresql://`` with an installed driver: SQLAlchemy 2.1 defaults to psycopg 3, our
    ``postgres`` extra installs psycopg2."""
    scheme, rest = url.split("://", 1)
    if "+" in scheme:
        return url
    import importlib.util

    for module, driver in (("psycopg", "psycopg"), ("psycopg2", "psycopg2")):
        if importlib.util.find_spec(module) is not None:
            return f"postgresql+{driver}://{rest}"
    raise StorageError(
        "PostgreSQL storage needs a driver: pip install 'statmech-nn[postgres]' (psycopg2)"
    )


def open_storage(
    url: str | os.PathLike | None = None, heartbeat: Heartbeat | None = None
) -> optuna.storages.BaseStorage:
    """Open the Optuna storage ``url`` (see :func:`normalize_storage`).

    RDB storages get ``heartbeat`` (default :class:`Heartbeat`); refuses the MLflow store.
    """
    url = normalize_storage(url)
    heartbeat = heartbeat or Heartbeat()
    if url.startswith("journal:"):
        path = Path(url.removeprefix("journal:"))
        if _is_mlflow_sqlite(path) or path.suffix in (".db", ".sqlite"):
            raise StorageError(
                f"{path} looks like an SQLite database (the MLflow store?); the journal storage "
                "needs its own file, e.g. mlruns/optuna.journal"
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        return JournalStorage(JournalFileBackend(str(path)))
    scheme = urlparse(url).scheme.split("+", 1)[0]
    if scheme == "sqlite":
        db = Path(url.split(":///", 1)[1]) if ":///" in url else None
        if db is not None and _is_mlflow_sqlite(db):
            raise StorageError(
                f"{db} is an MLflow tracking database; give Optuna its own file, e.g. "
                "sqlite:///mlruns/optuna.db, or use the default journal storage"
            )
    if scheme in ("postgresql", "postgres"):
        url = _postgres_driver_url(url)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        callback = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=heartbeat.max_retry)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(
                url,
                engine_kwargs={"pool_pre_ping": True},
                heartbeat_interval=heartbeat.interval,
                grace_period=heartbeat.grace_period,
                heartbeat_stale_trial_callback=callback,
            )
    except Exception as exc:  # noqa: BLE001 - driver and connection errors of any kind
        raise StorageError(
            f"cannot open Optuna storage {_redact(url)}: {str(exc).strip().splitlines()[0][:300]}"
        ) from exc


_NAME_REFUSED = set("'\"`\\")


def check_study_name(name: str) -> str:
    """``name`` if it can name a study and its MLflow run; :class:`StorageError` otherwise.

    Quotes, backquotes, backslashes and control characters are refused: the name is matched in
    MLflow search filters. Names never become paths, so ``/`` and ``..`` are harmless.
    """
    text = str(name)
    bad = sorted({c for c in text if c in _NAME_REFUSED or not c.isprintable()})
    if not text.strip() or bad or len(text) > 250:
        shown = ", ".join(repr(c) for c in bad) or "empty or longer than 250 characters"
        raise StorageError(f"study name {text!r} cannot be used ({shown}); use letters, digits, -_")
    return text


def andc_study_name(snp_run_id: str, kind: str, objective: str, per_site: bool = False) -> str:
    """``andc-OBJECTIVE-KIND-RUNID8[-per-site]``: THE name of a study when none is given."""
    return f"andc-{objective}-{kind}-{snp_run_id[:8]}" + ("-per-site" if per_site else "")


@dataclass(frozen=True)
class StudySpec:
    """What defines a study: its name, directions, and attributes that must match on resume.

    ``metric_names`` name the objectives (Optuna Dashboard's axes, the trials' MLflow metrics).
    """

    name: str
    directions: tuple[str, ...]
    attrs: Mapping[str, Any] = field(default_factory=dict)
    metric_names: tuple[str, ...] = ()


def _existing_study_id(storage: optuna.storages.BaseStorage, name: str) -> int | None:
    try:
        return storage.get_study_id_from_name(name)
    except KeyError:
        return None


def check_study(storage: optuna.storages.BaseStorage, spec: StudySpec) -> bool:
    """``True`` if ``spec.name`` exists and matches ``spec``, ``False`` if it does not exist.

    Raises :class:`StudyMismatchError` (having written nothing) if it exists with other
    directions or attributes.
    """
    study_id = _existing_study_id(storage, spec.name)
    if study_id is None:
        return False
    directions = tuple(d.name.lower() for d in storage.get_study_directions(study_id))
    attrs = storage.get_study_user_attrs(study_id)
    problems = []
    if directions != tuple(spec.directions):
        problems.append(f"directions {list(directions)} (asked {list(spec.directions)})")
    for key, value in spec.attrs.items():
        if key in attrs and attrs[key] != _jsonable(value):
            problems.append(f"{key}={attrs[key]!r} (asked {value!r})")
    if problems:
        raise StudyMismatchError(
            f"study {spec.name!r} already exists with "
            + "; ".join(problems)
            + "; choose another --study-name, or repeat the original settings to resume it"
        )
    return True


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value))


def ensure_study(
    storage: optuna.storages.BaseStorage, spec: StudySpec, where: str | None = None
) -> optuna.Study:
    """Create study ``spec.name`` (recording ``spec.attrs`` and metric names) or load it if it
    matches; logs which of the two happened (``where``: the storage URL for that line)."""
    if not check_study(storage, spec):
        try:
            directions = [optuna.study.StudyDirection[d.upper()] for d in spec.directions]
            study = optuna.create_study(
                storage=storage, study_name=spec.name, directions=directions
            )
        except optuna.exceptions.DuplicatedStudyError:
            check_study(storage, spec)
        else:
            for key, value in spec.attrs.items():
                study.set_user_attr(key, _jsonable(value))
            _name_metrics(study, spec)
            log.info("created study %s in %s", spec.name, _storage_label(storage, where))
            return study
    study = optuna.load_study(study_name=spec.name, storage=storage)
    _name_metrics(study, spec)
    log.info("resumed study %s (%d trials)", spec.name, len(study.get_trials(deepcopy=False)))
    return study


def _name_metrics(study: optuna.Study, spec: StudySpec) -> None:
    """Give the study ``spec.metric_names`` unless it has names (older studies get them too)."""
    if spec.metric_names and not study.metric_names:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(list(spec.metric_names))


def _storage_label(storage: optuna.storages.BaseStorage, where: str | None) -> str:
    """Where a storage keeps its studies, for a log line: its file, or its redacted URL."""
    if where is None:
        return type(storage).__name__
    return str(storage_file(where) or _redact(where))
