"""What a training run writes to and reads from MLflow and to the log: tags, params, dataset,
metrics, system metrics, one line per epoch and the summary line, resume."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from statmech_nn import tracking
from statmech_nn.errors import CheckpointError
from statmech_nn.train.config import TrainConfig
from statmech_nn.train.steps import is_training_state

log = logging.getLogger("statmech_nn.train")


def git_commit(mark_dirty: bool = False) -> str | None:
    """``HEAD`` of the checkout the package runs from (``+dirty`` after it if ``mark_dirty`` and
    tracked files changed); ``None`` without git or outside a checkout."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()

    try:
        head = git("rev-parse", "HEAD")
        dirty = mark_dirty and bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):  # no git, or not a checkout: no tag
        return None
    return (head + ("+dirty" if dirty else "")) or None


def run_tags(config: TrainConfig, resumed_from_epoch: int | None) -> dict[str, str]:
    """Tags of a training run: model, dataset, recipe, git commit, the epoch resumed from.

    The commit goes in MLflow's reserved ``mlflow.source.git.commit`` tag (shown by its UI).
    """
    from mlflow.utils.mlflow_tags import MLFLOW_GIT_COMMIT

    tags = {"model": config.model, "dataset": config.dataset, "recipe": str(config.recipe)}
    commit = git_commit()
    if commit:
        tags[MLFLOW_GIT_COMMIT] = commit
    if resumed_from_epoch is not None:
        tags["resumed_from_epoch"] = str(resumed_from_epoch)
    return tags


def flat_params(config: Mapping[str, Any]) -> dict[str, str]:
    """MLflow params of a config: dicts and lists as sorted JSON, everything else as ``str``."""
    return {
        k: json.dumps(v, sort_keys=True) if isinstance(v, dict | list) else str(v)
        for k, v in config.items()
    }


def log_dataset(splits: Any, config: TrainConfig) -> None:
    """Log the dataset as an MLflow input and its description as ``data/info.json``."""
    import mlflow
    from mlflow.data.code_dataset_source import CodeDatasetSource
    from mlflow.data.meta_dataset import MetaDataset

    info = dict(splits.info())
    source = CodeDatasetSource(
        {
            "dataset": config.dataset,
            "data_root": str(config.data_root),
            "img_size": str(config.img_size),
            "val_fraction": str(config.val_fraction),
            "seed": str(config.seed),
            "options": json.dumps(config.dataset_options, sort_keys=True),
        }
    )
    dataset = MetaDataset(source, name=config.dataset)  # type: ignore[abstract]
    mlflow.log_input(dataset, context="training")
    if info:
        mlflow.log_dict(json.loads(json.dumps(info, default=str)), "data/info.json")


def log_start(config: TrainConfig, full_config: Mapping[str, Any], world: int, splits: Any) -> None:
    """The params (whole config with the model's, world size) and the dataset of a new run."""
    import mlflow

    mlflow.log_params(flat_params(full_config))
    mlflow.log_param("world_size", world)
    log_dataset(splits, config)


def log_metrics(metrics: Mapping[str, float], step: int) -> None:
    """Log an epoch's metrics at step ``step`` (the epoch number, 1-based)."""
    import mlflow

    mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)


SYSTEM_METRICS_INTERVAL_S = 10.0
"""Seconds between system-metric samples (CPU, memory, GPU) of a training run."""


@contextlib.contextmanager
def system_metrics() -> Iterator[None]:
    """Training runs started inside log MLflow system metrics every 10 s (psutil).

    On unless ``MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING`` says otherwise (tests set it false); the
    user's ``MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL`` wins over ours.
    """
    wanted = {
        "MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING": "true",
        "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": str(SYSTEM_METRICS_INTERVAL_S),
    }
    added = [k for k in wanted if k not in os.environ]
    os.environ.update({k: wanted[k] for k in added})
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)


def format_duration(seconds: float) -> str:
    """``42s``, ``3m05s``, ``2h07m``: a duration for a log line."""
    if not math.isfinite(seconds):
        return "?"
    total = max(0, round(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


EPOCH_FIELDS = ("train_loss", "train_acc", "val_loss", "val_acc", "test_acc")


def epoch_line(epoch: int, epochs: int, metrics: Mapping[str, float], eta_s: float) -> str:
    """``epoch 3/10  train_loss 1.234 ... test_acc 0.415  1234 img/s  ETA 5m12s``."""
    values = "  ".join(f"{k} {metrics[k]:.4g}" for k in EPOCH_FIELDS if k in metrics)
    speed = f"  {metrics['images_per_s']:.0f} img/s" if "images_per_s" in metrics else ""
    return f"epoch {epoch}/{epochs}  {values}{speed}  ETA {format_duration(eta_s)}"


def checkpoints_location(run_id: str) -> str:
    """Where the checkpoints of ``run_id`` are: their folder, or their artifact URI."""
    from statmech_nn.tracking.checkpoints import CHECKPOINT_DIR, local_artifact_dir

    local = local_artifact_dir(run_id)
    if local is not None:
        return str(local / CHECKPOINT_DIR)
    return f"{tracking.get_run(run_id).info.artifact_uri}/{CHECKPOINT_DIR}"


class EpochLog:
    """The epoch callback of :func:`~statmech_nn.train.train`: logs each epoch's line, then
    calls ``then(epoch, metrics)``; :meth:`finish` logs the summary line of the run."""

    def __init__(
        self,
        config: TrainConfig,
        start_epoch: int,
        then: Callable[[int, Mapping[str, float]], None] | None = None,
    ) -> None:
        self.config = config
        self.start_epoch = start_epoch
        self.then = then
        self.started = time.monotonic()
        self.last: dict[str, float] = {}

    def __call__(self, epoch: int, metrics: Mapping[str, float]) -> None:
        done = epoch - self.start_epoch
        elapsed = time.monotonic() - self.started
        eta = elapsed / done * (self.config.epochs - epoch) if done > 0 else math.nan
        log.info(epoch_line(epoch, self.config.epochs, metrics, eta))
        self.last = dict(metrics)
        if self.then is not None:
            self.then(epoch, metrics)

    def finish(self, run_id: str) -> None:
        """``trained run ID (model on dataset, N epochs in T): val_acc .. test_acc ..; ...``."""
        config = self.config
        accuracies = ", ".join(
            f"{k} {self.last[k]:.4g}"
            for k in ("train_acc", "val_acc", "test_acc")
            if k in self.last
        )
        trained = config.epochs - self.start_epoch
        took = format_duration(time.monotonic() - self.started)
        log.info(
            "trained run %s (%s on %s, %d of %d epochs in %s): %s; checkpoints in %s",
            run_id, config.model, config.dataset, trained, config.epochs, took,
            accuracies or "no epochs left to train", checkpoints_location(run_id),
        )  # fmt: skip


def load_resume_state(run_id: str) -> tuple[dict[str, Any], Path]:
    """The newest readable checkpoint of ``run_id`` (a corrupt newest one is skipped, warned)."""
    epochs = tracking.list_checkpoints(run_id)
    if not epochs:
        raise CheckpointError(f"MLflow run {run_id} has no checkpoints to resume from")
    last_error: CheckpointError | None = None
    for epoch in reversed(epochs):
        try:
            state, path = tracking.read_run_checkpoint(run_id, epoch)
        except CheckpointError as exc:
            log.warning("skipping unreadable checkpoint of epoch %d: %s", epoch, exc)
            last_error = exc
            continue
        if not is_training_state(state):
            raise CheckpointError(
                f"checkpoint of epoch {epoch} of run {run_id} is not a statmech-nn training "
                "checkpoint; it cannot be resumed"
            )
        return state, path
    assert last_error is not None
    raise last_error
