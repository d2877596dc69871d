"""MLflow tracking: the store, runs that record their failures, and atomic checkpoints.

The default store lives under the working directory: tracking URI ``sqlite:///mlruns/mlflow.db``
(made absolute, so that subprocesses and ``cd`` cannot move it) and artifacts under
``mlruns/artifacts``. ``--tracking-uri`` or ``MLFLOW_TRACKING_URI`` select another store, e.g.
a team's tracking server. Call :func:`init_store` once, in one process, before starting parallel
workers: it creates (and migrates) the database.

Checkpoints are plain state dicts of tensors, numbers, strings, lists and dicts, so they load with
``torch.load(weights_only=True)``: no pickled objects, nothing executed on load. They are stored
as run artifacts ``checkpoints/epoch_{E:04d}.pt`` plus ``checkpoints/config.json``. On a local
artifact store they are written in place atomically (temporary file, fsync, rename), so a process
killed mid-write never leaves a truncated checkpoint under a checkpoint's name.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import sqlite3
import tempfile
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import torch

from statmech_nn import processes
from statmech_nn.errors import CheckpointError, TrackingError

CHECKPOINT_DIR = "checkpoints"
PROCESS_TAG = "statmech_nn.process"
CONFIG_NAME = "config.json"
DEFAULT_DB = Path("mlruns") / "mlflow.db"
_CHECKPOINT_RE = re.compile(r"^epoch_(\d{4,})\.pt$")
_REMOTE_SCHEMES = ("http", "https", "databricks", "databricks-uc", "uc")
_CHECK_TIMEOUT_S = 5
_CHECK_RETRIES = 0
_HTTP_ENV = ("MLFLOW_HTTP_REQUEST_TIMEOUT", "MLFLOW_HTTP_REQUEST_MAX_RETRIES")


def default_tracking_uri() -> str:
    """``sqlite:///mlruns/mlflow.db`` of the current working directory, as an absolute URI."""
    return "sqlite:///" + str((Path.cwd() / DEFAULT_DB).resolve())


def resolve_uri(uri: str | None = None) -> str:
    """The tracking URI to use: ``uri`` if given, else ``MLFLOW_TRACKING_URI``, else the default."""
    if uri:
        return uri
    env = os.environ.get("MLFLOW_TRACKING_URI")
    return env if env else default_tracking_uri()


def _is_remote(uri: str) -> bool:
    return urlparse(uri).scheme in _REMOTE_SCHEMES


def _sqlite_path(uri: str) -> Path | None:
    if not uri.startswith("sqlite:///"):
        return None
    rest = uri.removeprefix("sqlite:///")
    if not rest or rest == ":memory:":
        return None
    return Path(rest) if rest.startswith("/") else Path.cwd() / rest


def artifact_root(uri: str) -> str | None:
    """Where experiments created by us keep artifacts; ``None`` leaves it to a tracking server.

    For a SQLite store: ``artifacts/`` next to the database (``mlruns/artifacts`` by default);
    for other databases: ``mlruns/artifacts`` of the working directory.
    """
    if _is_remote(uri):
        return None
    db = _sqlite_path(uri)
    base = db.parent if db is not None else Path.cwd() / "mlruns"
    return (base / "artifacts").resolve().as_uri()


@contextlib.contextmanager
def _short_http_timeouts() -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in _HTTP_ENV}
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(_CHECK_TIMEOUT_S))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(_CHECK_RETRIES))
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def init_store(uri: str | None = None) -> str:
    """Create (or migrate) the tracking store, make it mlflow's current one, return its URI.

    Idempotent and cheap on an existing store. A new SQLite store is copied from a cached,
    freshly migrated empty database when one exists for this MLflow version (running MLflow's
    migrations takes seconds); see :func:`_template_path`. A tracking server is probed with a
    short timeout (``MLFLOW_HTTP_REQUEST_TIMEOUT`` / ``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` override
    it), so an unreachable one fails with :class:`TrackingError` instead of hanging.
    """
    uri = resolve_uri(uri)
    db = _sqlite_path(uri)
    created = False
    if db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
        created = not db.exists()
        if created and _copy_template(db):
            try:
                _open_store(uri)
            except TrackingError:
                db.unlink(missing_ok=True)
                _drop_template()
    _open_store(uri)
    if created and db is not None:
        _relocate_default_experiment(db, uri)
        _save_template(db)
    _set_mlflow_uri(uri)
    if not created:
        try:
            sweep_dead_runs()
        except Exception as exc:  # housekeeping must never stop the command it precedes
            warnings.warn(
                f"could not check for runs of dead processes: {_first_line(exc)}", stacklevel=2
            )
    return uri


def _open_store(uri: str) -> None:
    from mlflow.tracking import MlflowClient

    try:
        with _short_http_timeouts() if _is_remote(uri) else contextlib.nullcontext():
            MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
    except Exception as exc:  # any failure means "store not usable"
        what = "reach the MLflow tracking server" if _is_remote(uri) else "open the MLflow store"
        raise TrackingError(
            f"cannot {what} at {uri}: {_first_line(exc)}; start the server or pass another "
            "--tracking-uri (default: sqlite:///mlruns/mlflow.db in the working directory)"
        ) from exc


def _template_path() -> Path:
    """The cached empty store: ``$STATMECH_CACHE`` or ``~/.cache/statmech-nn``, per version."""
    import mlflow
    import sqlalchemy

    base = os.environ.get("STATMECH_CACHE")
    if not base:
        base = str(Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "statmech-nn")
    return Path(base) / f"mlflow-{mlflow.__version__}-sqlalchemy-{sqlalchemy.__version__}.db"


def _copy_template(db: Path) -> bool:
    try:
        template = _template_path()
        if not template.is_file():
            return False
        fd, tmp = tempfile.mkstemp(dir=db.parent, prefix=f".{db.name}.", suffix=".tmp")
        os.close(fd)
        try:
            shutil.copyfile(template, tmp)
            os.link(tmp, db)
        finally:
            os.unlink(tmp)
    except FileExistsError:
        return False
    except OSError:
        return False
    return True


def _save_template(db: Path) -> None:
    with contextlib.suppress(OSError):
        template = _template_path()
        if template.is_file():
            return
        template.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=template.parent, prefix=".template.", suffix=".tmp")
        os.close(fd)
        try:
            shutil.copyfile(db, tmp)
            os.replace(tmp, template)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)


def _drop_template() -> None:
    with contextlib.suppress(OSError):
        _template_path().unlink()


def _relocate_default_experiment(db: Path, uri: str) -> None:
    """Point the ``Default`` experiment of a new store at ``<artifact root>/0``, like ours."""
    root = artifact_root(uri)
    if root is None:
        return
    with contextlib.closing(sqlite3.connect(db, timeout=30)) as conn, conn:
        conn.execute(
            "UPDATE experiments SET artifact_location = ? WHERE experiment_id = 0",
            (root + "/0",),
        )


def use_store(uri: str | None = None) -> str:
    """Point mlflow at an existing store without creating or migrating it (parallel workers)."""
    uri = resolve_uri(uri)
    _set_mlflow_uri(uri)
    return uri


def check_store(uri: str | None = None) -> str:
    """Like :func:`use_store`, but a tracking server is probed first with a short timeout."""
    uri = resolve_uri(uri)
    if _is_remote(uri):
        _open_store(uri)
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


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


def _client():
    from mlflow.tracking import MlflowClient

    return MlflowClient()


def current_uri() -> str:
    """mlflow's current tracking URI (as set by :func:`init_store`)."""
    import mlflow

    return mlflow.get_tracking_uri()


def experiment_id(name: str) -> str:
    """The id of experiment ``name``, created (with our artifact location) if missing.

    Safe when several processes create the same experiment at once.
    """
    from mlflow.exceptions import MlflowException

    client = _client()
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifact_root(current_uri()))
    except MlflowException:
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


def get_run(run_id: str):
    """The MLflow run ``run_id``; :class:`TrackingError` if the store has no such run."""
    from mlflow.exceptions import MlflowException

    try:
        return _client().get_run(run_id)
    except MlflowException as exc:
        raise TrackingError(
            f"no MLflow run {run_id!r} in {current_uri()}; check the run id, or pass the "
            "--tracking-uri of the store that holds it"
        ) from exc


@contextlib.contextmanager
def run(
    experiment: str | None,
    run_name: str | None = None,
    parent_run_id: str | None = None,
    tags: Mapping[str, Any] | None = None,
    resume_run_id: str | None = None,
) -> Iterator[Any]:
    """Start (or resume) an MLflow run as the active run; yield mlflow's ``ActiveRun``.

    The run ends FINISHED, FAILED on an exception, KILLED on ``KeyboardInterrupt``; the exception
    is re-raised. Works inside another active run (the new one is pushed on mlflow's run stack).
    ``experiment=None`` uses the parent's experiment (or ``"Default"``).
    """
    import mlflow
    from mlflow.tracking.context import registry as context_registry
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

    client = _client()
    if resume_run_id is not None:
        run_id = get_run(resume_run_id).info.run_id
        for key, value in {**(tags or {}), PROCESS_TAG: json.dumps(processes.identity())}.items():
            client.set_tag(run_id, key, str(value))
    else:
        if experiment is None:
            experiment_ = get_run(parent_run_id).info.experiment_id if parent_run_id else None
            exp_id = experiment_ if experiment_ is not None else experiment_id("Default")
        else:
            exp_id = experiment_id(experiment)
        all_tags = {k: str(v) for k, v in (tags or {}).items()}
        all_tags[PROCESS_TAG] = json.dumps(processes.identity())
        if parent_run_id is not None:
            get_run(parent_run_id)
            all_tags[MLFLOW_PARENT_RUN_ID] = parent_run_id
        if run_name:
            all_tags[MLFLOW_RUN_NAME] = run_name
        created = client.create_run(
            exp_id, tags=context_registry.resolve_tags(all_tags), run_name=run_name
        )
        run_id = created.info.run_id
    active = mlflow.start_run(run_id=run_id, nested=mlflow.active_run() is not None)
    try:
        yield active
    except KeyboardInterrupt:
        _end(run_id, "KILLED")
        raise
    except BaseException:
        _end(run_id, "FAILED")
        raise
    _end(run_id, "FINISHED")


def sweep_dead_runs(experiment_ids: list[str] | None = None) -> list[str]:
    """Mark KILLED the RUNNING runs whose process, on this host, is gone (e.g. SIGKILL).

    Runs record their process under :data:`PROCESS_TAG`; runs of live processes, of other hosts
    or without the tag are left alone. Returns the ids of the runs it marked.
    """
    client = _client()
    if experiment_ids is None:
        experiment_ids = [e.experiment_id for e in client.search_experiments()]
    if not experiment_ids:
        return []
    marked = []
    for run in client.search_runs(
        experiment_ids, filter_string="attributes.status = 'RUNNING'", max_results=1000
    ):
        try:
            mark = json.loads(run.data.tags.get(PROCESS_TAG, "null"))
        except ValueError:
            continue
        if isinstance(mark, dict) and processes.on_this_host(mark) and not processes.alive(mark):
            client.set_tag(run.info.run_id, "statmech_nn.ended_by", "sweep: its process is gone")
            client.set_terminated(run.info.run_id, "KILLED")
            marked.append(run.info.run_id)
    return marked


def _end(run_id: str, status: str) -> None:
    import mlflow

    current = mlflow.active_run()
    if current is not None and current.info.run_id == run_id:
        mlflow.end_run(status)
    else:
        _client().set_terminated(run_id, status)


def child_run(parent_run_id: str, name: str, experiment: str | None = None):
    """A run ``name`` nested under ``parent_run_id``, by default in the parent's experiment."""
    return run(experiment, run_name=name, parent_run_id=parent_run_id)


def mark(run_id: str, status: str) -> None:
    """Set the status of ``run_id`` (``FINISHED``, ``FAILED``, ``KILLED``) without ending others."""
    _client().set_terminated(run_id, status)


# -- checkpoints -------------------------------------------------------------------------------


def save_checkpoint(state: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Write ``state`` to ``path`` atomically: temporary file in the same folder, fsync, rename.

    A reader sees either the old file or the complete new one, never a partial write. Temporary
    files are hidden (``.name.*.tmp``) and removed on error.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(dict(state), fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    return path


def _write_text_atomic(text: str, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``; :class:`CheckpointError` if unreadable."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, bad pickle, forbidden global
        raise CheckpointError(
            f"checkpoint {path} is corrupt or truncated ({_first_line(exc)}); resume from an "
            "earlier epoch or retrain"
        ) from exc
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(state).__name__}, not a dict")
    return state


def _local_artifact_dir(run_id: str) -> Path | None:
    uri = get_run(run_id).info.artifact_uri
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if parsed.scheme == "" or (len(parsed.scheme) == 1 and os.name == "nt"):
        return Path(uri)
    return None


def checkpoint_name(epoch: int) -> str:
    """The artifact file name of epoch ``epoch``'s checkpoint."""
    return f"epoch_{epoch:04d}.pt"


def log_checkpoint(run_id: str, state: Mapping[str, Any], epoch: int) -> str:
    """Store ``state`` as ``checkpoints/epoch_{E:04d}.pt`` of ``run_id`` (plus ``config.json``).

    Returns the artifact path. ``state["config"]``, if present, is also written as
    ``checkpoints/config.json`` so the run's configuration is readable without torch.
    """
    name = checkpoint_name(epoch)
    config = state.get("config")
    local = _local_artifact_dir(run_id)
    if local is not None:
        folder = local / CHECKPOINT_DIR
        if config is not None:
            _write_text_atomic(json.dumps(config, indent=2, sort_keys=True), folder / CONFIG_NAME)
        save_checkpoint(state, folder / name)
    else:
        client = _client()
        with tempfile.TemporaryDirectory() as tmp:
            if config is not None:
                cfg = Path(tmp) / CONFIG_NAME
                cfg.write_text(json.dumps(config, indent=2, sort_keys=True), encoding="utf-8")
                client.log_artifact(run_id, str(cfg), CHECKPOINT_DIR)
            save_checkpoint(state, Path(tmp) / name)
            client.log_artifact(run_id, str(Path(tmp) / name), CHECKPOINT_DIR)
    return f"{CHECKPOINT_DIR}/{name}"


def list_checkpoints(run_id: str) -> list[int]:
    """Epochs of the complete checkpoints of ``run_id``, ascending (temporary files ignored)."""
    local = _local_artifact_dir(run_id)
    if local is not None:
        folder = local / CHECKPOINT_DIR
        names = [p.name for p in folder.iterdir()] if folder.is_dir() else []
    else:
        names = [Path(f.path).name for f in _client().list_artifacts(run_id, CHECKPOINT_DIR)]
    epochs = [int(m.group(1)) for n in names if (m := _CHECKPOINT_RE.match(n))]
    return sorted(epochs)


def checkpoint_path(run_id: str, epoch: int | None = None) -> Path:
    """A local file holding the checkpoint of ``epoch`` (default: the last) of ``run_id``.

    Local artifact stores return the file in place; remote ones download it to a temporary
    folder.
    """
    epochs = list_checkpoints(run_id)
    if not epochs:
        raise CheckpointError(
            f"MLflow run {run_id} has no checkpoints (artifacts {CHECKPOINT_DIR}/epoch_*.pt); "
            "is it a training run?"
        )
    if epoch is None:
        epoch = epochs[-1]
    if epoch not in epochs:
        raise CheckpointError(
            f"MLflow run {run_id} has no checkpoint of epoch {epoch}; it has epochs {epochs}"
        )
    local = _local_artifact_dir(run_id)
    if local is not None:
        return local / CHECKPOINT_DIR / checkpoint_name(epoch)
    import mlflow

    dst = tempfile.mkdtemp(prefix="statmech-ckpt-")
    got = mlflow.artifacts.download_artifacts(
        run_id=run_id, artifact_path=f"{CHECKPOINT_DIR}/{checkpoint_name(epoch)}", dst_path=dst
    )
    return Path(got)


def read_run_checkpoint(run_id: str, epoch: int | None = None) -> tuple[dict[str, Any], Path]:
    """The raw checkpoint state dict of ``run_id`` at ``epoch`` (default: last) and its file."""
    path = checkpoint_path(run_id, epoch)
    return read_checkpoint(path), path


@dataclass
class LoadedCheckpoint:
    """A model rebuilt from a run's checkpoint, in eval mode, with its training configuration."""

    model: torch.nn.Module
    config: dict[str, Any]
    epoch: int
    run_id: str
    path: str
    model_config: dict[str, Any] = field(default_factory=dict)


def model_config_of(state: Mapping[str, Any], where: str) -> dict[str, Any]:
    """The model config stored in a checkpoint state (``model_config``)."""
    config = state.get("model_config")
    if config is None:
        config = (state.get("config") or {}).get("model_config")
    if not isinstance(config, dict) or "name" not in config:
        raise CheckpointError(f"checkpoint {where} holds no model configuration (model_config)")
    return config


def build_model(state: Mapping[str, Any], where: str) -> torch.nn.Module:
    """Rebuild the model of a checkpoint state and load its weights strictly (eval mode)."""
    from statmech_nn import models

    model = models.from_config(model_config_of(state, where))
    if "model" not in state:
        raise CheckpointError(f"checkpoint {where} holds no model weights ('model')")
    models.load_weights(model, state["model"])
    return model.eval()


def load_checkpoint(run_id: str, epoch: int | None = None) -> LoadedCheckpoint:
    """Rebuild the model of ``run_id`` at ``epoch`` (default: the last checkpoint), in eval mode.

    Raises :class:`TrackingError` for an unknown run and :class:`CheckpointError` for a run
    without checkpoints, a corrupt file, or weights that do not fit the stored architecture.
    """
    state, path = read_run_checkpoint(run_id, epoch)
    model = build_model(state, str(path))
    return LoadedCheckpoint(
        model=model,
        config=dict(state.get("config") or {}),
        epoch=int(state.get("epoch", epoch if epoch is not None else -1)),
        run_id=run_id,
        path=str(path),
        model_config=model_config_of(state, str(path)),
    )
