"""The tracking store: create or migrate it, probe a server with a short timeout, select it."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import warnings
from pathlib import Path

from statmech_nn.errors import TrackingError
from statmech_nn.fileio import exclusive_lock
from statmech_nn.tracking.http import PROBE, http_limits
from statmech_nn.tracking.pending import pending_ends
from statmech_nn.tracking.runs import ENDED_BY_TAG, sweep_dead_runs
from statmech_nn.tracking.template import copy_template, drop_template, save_template
from statmech_nn.tracking.uris import (
    EXPERIMENT_TAGS,
    artifact_root,
    first_line,
    is_remote,
    resolve_uri,
    sqlite_path,
)


def init_store(uri: str | None = None) -> str:
    """Create (or migrate) the tracking store, make it mlflow's current one, return its URI.

    Idempotent and cheap on an existing store. A new SQLite store is copied from a cached,
    freshly migrated empty database when one exists for this MLflow version (running MLflow's
    migrations takes seconds); see :func:`~statmech_nn.tracking.template.template_path`. A
    tracking server is probed with a short timeout (``MLFLOW_HTTP_REQUEST_TIMEOUT`` /
    ``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` override it), so an unreachable one fails with
    :class:`TrackingError` instead of hanging. Runs a lost server could not end are ended
    (``tracking.pending``), then runs of dead local processes are marked KILLED.
    """
    uri = resolve_uri(uri)
    db = sqlite_path(uri)
    if db is None:
        open_store(uri)
        created = False
    else:
        db.parent.mkdir(parents=True, exist_ok=True)
        with exclusive_lock(db.parent / f".{db.name}.lock"):
            created = _create_or_open_sqlite(db, uri)
    _set_mlflow_uri(uri)
    if not created:
        _end_deferred_runs(uri)
        _sweep_quietly()
    return uri


def _end_deferred_runs(uri: str) -> list[str]:
    """End the runs a lost server could not end (``tracking.pending``), now that it answers."""
    from statmech_nn.tracking.uris import client

    ended = []
    for marker, run_id, status in pending_ends(uri):
        try:
            mlflow_client = client()
            if mlflow_client.get_run(run_id).info.status == "RUNNING":
                mlflow_client.set_tag(run_id, ENDED_BY_TAG, "next command: the server was lost")
                mlflow_client.set_terminated(run_id, status)
                ended.append(run_id)
            marker.unlink(missing_ok=True)
        except Exception as exc:  # housekeeping must never stop the command it precedes
            warnings.warn(f"could not end run {run_id}: {first_line(exc)}", stacklevel=3)
    return ended


def _create_or_open_sqlite(db: Path, uri: str) -> bool:
    """Open (migrating if needed) the SQLite store ``db``, creating it if new; whether it was.

    Called under a lock beside the database: MLflow's migrations are not safe to run from
    several processes at once ("duplicate column name", "_alembic_tmp_* already exists"), and
    four commands started together in a fresh folder must all get one working store.
    """
    created = not db.exists()
    if created and copy_template(db):
        try:
            open_store(uri)
        except TrackingError:
            db.unlink(missing_ok=True)
            drop_template()
    open_store(uri)
    if created:
        _relocate_default_experiment(db, uri)
        save_template(db)
    return created


def _sweep_quietly() -> None:
    """Sweep runs of dead processes; a failure is a warning (it must not stop the command)."""
    try:
        sweep_dead_runs()
    except Exception as exc:  # housekeeping must never stop the command it precedes
        warnings.warn(
            f"could not check for runs of dead processes: {first_line(exc)}", stacklevel=3
        )


def open_store(uri: str) -> None:
    """Check that the store at ``uri`` answers (migrating a SQLite one); else TrackingError."""
    from mlflow.tracking import MlflowClient

    try:
        with http_limits(PROBE) if is_remote(uri) else contextlib.nullcontext():
            MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
    except Exception as exc:  # any failure means "store not usable"
        raise TrackingError(f"{_cannot_open(uri)}: {first_line(exc)}; {_advice(uri)}") from exc


def _cannot_open(uri: str) -> str:
    """What could not be opened: the tracking server, the SQLite file, or the database."""
    if is_remote(uri):
        return f"cannot reach the MLflow tracking server at {uri}"
    db = sqlite_path(uri)
    if db is not None:
        return f"cannot open the MLflow store {db}"
    return f"cannot open the MLflow store at {uri}"


def _advice(uri: str) -> str:
    """What to do about a store that does not open: a server, a SQLite file, another database."""
    other = "--tracking-uri (default: sqlite:///mlruns/mlflow.db in the working directory)"
    if is_remote(uri):
        return f"start the server or pass another {other}"
    db = sqlite_path(uri)
    if db is not None:
        return (
            f"if {db.name} is corrupt, move it away (the next command creates a new one); else "
            f"check that {db} and its folder are readable and writable, or pass another {other}"
        )
    return f"check that the database is running and the URI is right, or pass another {other}"


def _relocate_default_experiment(db: Path, uri: str) -> None:
    """Point the ``Default`` experiment of a new store at ``<artifact root>/0`` and tag it, like
    the experiments we create.

    No public MLflow API changes an experiment's artifact location: ``MlflowClient`` and the
    store (``AbstractStore``) only rename, delete, restore and tag experiments, and the store
    constructor's ``default_artifact_root`` cannot reach a database copied from the template
    (:mod:`~statmech_nn.tracking.template`), whose ``Default`` row names the template's folder.
    So the location is one SQL ``UPDATE`` on the new, not yet shared file; the tags go through
    the client.
    """
    from mlflow.tracking import MlflowClient

    root = artifact_root(uri)
    if root is None:
        return
    with contextlib.closing(sqlite3.connect(db, timeout=30)) as conn, conn:
        conn.execute(
            "UPDATE experiments SET artifact_location = ? WHERE experiment_id = 0",
            (root + "/0",),
        )
    mlflow_client = MlflowClient(tracking_uri=uri)
    for key, value in EXPERIMENT_TAGS.items():
        mlflow_client.set_experiment_tag("0", key, value)


def use_store(uri: str | None = None) -> str:
    """Point mlflow at an existing store without creating or migrating it (parallel workers)."""
    uri = resolve_uri(uri)
    _set_mlflow_uri(uri)
    return uri


def check_store(uri: str | None = None) -> str:
    """Like :func:`use_store`, but a tracking server is probed first with a short timeout."""
    uri = resolve_uri(uri)
    if is_remote(uri):
        open_store(uri)
    return use_store(uri)


def _set_mlflow_uri(uri: str) -> None:
    # mlflow.set_tracking_uri also exports MLFLOW_TRACKING_URI; undo that, so the variable keeps
    # meaning "the user's choice" and a later default (another working directory) still works.
    import mlflow

    before = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before


def server_lost(uri: str) -> bool:
    """Whether ``uri`` is a tracking server that does not answer a short probe now."""
    if not is_remote(uri):
        return False
    try:
        open_store(uri)
    except TrackingError:
        return True
    return False
