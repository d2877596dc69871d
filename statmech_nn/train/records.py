"""What a training run writes to and reads from MLflow: tags, params, dataset, metrics, resume."""

from __future__ import annotations

import json
import logging
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from statmech_nn import tracking
from statmech_nn.errors import CheckpointError
from statmech_nn.train.config import TrainConfig
from statmech_nn.train.steps import is_training_state

log = logging.getLogger("statmech_nn.train")


def git_commit() -> str | None:
    """The commit of the checked-out source, if it is a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):  # no git, or not a checkout: no tag
        return None
    return out.stdout.strip() or None


def run_tags(config: TrainConfig, resumed_from_epoch: int | None) -> dict[str, str]:
    """Tags of a training run: model, dataset, recipe, git commit, the epoch resumed from."""
    tags = {"model": config.model, "dataset": config.dataset, "recipe": str(config.recipe)}
    commit = git_commit()
    if commit:
        tags["git_commit"] = commit
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
