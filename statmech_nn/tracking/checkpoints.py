"""Checkpoints as run artifacts: atomic writes, listing, reading without pickle, rebuilt models."""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import torch

from statmech_nn.errors import CheckpointError
from statmech_nn.fileio import atomic_write, atomic_write_text
from statmech_nn.tracking.runs import get_run
from statmech_nn.tracking.uris import client, first_line

CHECKPOINT_DIR = "checkpoints"
CONFIG_NAME = "config.json"
CHECKPOINT_RE = re.compile(r"^epoch_(\d{4,})\.pt$")
"""The artifact name of a complete checkpoint (temporary files are hidden ``.epoch_*.tmp``)."""


def save_checkpoint(state: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Write ``state`` to ``path`` atomically: temporary file in the same folder, fsync, rename.

    A reader sees either the old file or the complete new one, never a partial write. Temporary
    files are hidden (``.name.*.tmp``) and removed on error.
    """
    return atomic_write(path, lambda fh: torch.save(dict(state), fh))


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``; :class:`CheckpointError` if unreadable."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, bad pickle, forbidden global
        raise CheckpointError(
            f"checkpoint {path} is corrupt or truncated ({first_line(exc)}); resume from an "
            "earlier epoch or retrain"
        ) from exc
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(state).__name__}, not a dict")
    return state


def local_artifact_dir(run_id: str) -> Path | None:
    """The artifact folder of ``run_id`` on this machine; ``None`` for a remote artifact store."""
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


def _config_text(config: Any) -> str:
    return json.dumps(config, indent=2, sort_keys=True)


def log_checkpoint(run_id: str, state: Mapping[str, Any], epoch: int) -> str:
    """Store ``state`` as ``checkpoints/epoch_{E:04d}.pt`` of ``run_id`` (plus ``config.json``).

    Returns the artifact path. ``state["config"]``, if present, is also written as
    ``checkpoints/config.json`` so the run's configuration is readable without torch.
    """
    name = checkpoint_name(epoch)
    config = state.get("config")
    local = local_artifact_dir(run_id)
    if local is not None:
        folder = local / CHECKPOINT_DIR
        if config is not None:
            atomic_write_text(folder / CONFIG_NAME, _config_text(config))
        save_checkpoint(state, folder / name)
    else:
        mlflow_client = client()
        with tempfile.TemporaryDirectory() as tmp:
            if config is not None:
                cfg = Path(tmp) / CONFIG_NAME
                cfg.write_text(_config_text(config), encoding="utf-8")
                mlflow_client.log_artifact(run_id, str(cfg), CHECKPOINT_DIR)
            save_checkpoint(state, Path(tmp) / name)
            mlflow_client.log_artifact(run_id, str(Path(tmp) / name), CHECKPOINT_DIR)
    return f"{CHECKPOINT_DIR}/{name}"


def list_checkpoints(run_id: str) -> list[int]:
    """Epochs of the complete checkpoints of ``run_id``, ascending (temporary files ignored)."""
    local = local_artifact_dir(run_id)
    if local is not None:
        folder = local / CHECKPOINT_DIR
        names = [p.name for p in folder.iterdir()] if folder.is_dir() else []
    else:
        names = [Path(f.path).name for f in client().list_artifacts(run_id, CHECKPOINT_DIR)]
    epochs = [int(m.group(1)) for n in names if (m := CHECKPOINT_RE.match(n))]
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
    local = local_artifact_dir(run_id)
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
