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

Modules: ``uris`` (where the store is), ``template`` (the cached empty SQLite store), ``store``
(create, probe, select), ``runs`` (run context, child runs, the sweep of dead runs, resume
checks), ``checkpoints`` (save, list, read, rebuild the model), ``http`` (bounded HTTP retries)
and ``pending`` (a run's checkpoint and end kept locally while its tracking server is lost).
"""

from statmech_nn.tracking.checkpoints import (
    CHECKPOINT_DIR,
    CHECKPOINT_RE,
    CONFIG_NAME,
    LoadedCheckpoint,
    build_model,
    checkpoint_name,
    checkpoint_path,
    list_checkpoints,
    load_checkpoint,
    local_artifact_dir,
    log_checkpoint,
    model_config_of,
    read_checkpoint,
    read_run_checkpoint,
    read_weights,
    retain_resume_states,
    save_checkpoint,
    save_weights,
    weights_name,
)

# The old private name, still used by callers outside this package.
from statmech_nn.tracking.checkpoints import local_artifact_dir as _local_artifact_dir
from statmech_nn.tracking.pending import TrackingLost, keep_checkpoint, unsent_folder
from statmech_nn.tracking.runs import (
    ENDED_BY_TAG,
    PROCESS_TAG,
    child_run,
    experiment_id,
    get_run,
    logged_steps,
    refuse_live_resume,
    run,
    sweep_dead_runs,
)
from statmech_nn.tracking.store import (
    check_store,
    init_store,
    open_store,
    server_lost,
    use_store,
)
from statmech_nn.tracking.uris import (
    DEFAULT_DB,
    artifact_root,
    current_uri,
    default_tracking_uri,
    resolve_uri,
)

__all__ = [
    "CHECKPOINT_DIR",
    "CHECKPOINT_RE",
    "CONFIG_NAME",
    "DEFAULT_DB",
    "ENDED_BY_TAG",
    "PROCESS_TAG",
    "LoadedCheckpoint",
    "TrackingLost",
    "artifact_root",
    "build_model",
    "check_store",
    "checkpoint_name",
    "checkpoint_path",
    "child_run",
    "current_uri",
    "default_tracking_uri",
    "experiment_id",
    "get_run",
    "init_store",
    "keep_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "local_artifact_dir",
    "log_checkpoint",
    "logged_steps",
    "model_config_of",
    "open_store",
    "read_checkpoint",
    "read_run_checkpoint",
    "read_weights",
    "refuse_live_resume",
    "resolve_uri",
    "retain_resume_states",
    "run",
    "save_checkpoint",
    "save_weights",
    "server_lost",
    "sweep_dead_runs",
    "unsent_folder",
    "use_store",
    "weights_name",
    "_local_artifact_dir",
]
