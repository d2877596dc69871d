"""Checkpoints as run artifacts: atomic writes, listing, reading without pickle, rebuilt models.

Two stored forms, both read everywhere: ``epoch_EEEE.pt``, a full resume state (weights,
optimiser moments, schedule, scaler, RNGs; read with ``weights_only=True``), and
``epoch_EEEE.safetensors``, the weights alone with the run and model configs as JSON in the
safetensors metadata (no pickle; memory-mapped reads). A training run keeps the full state of its
newest ``keep_resume`` checkpoints only (TrainConfig, default 2) and rewrites older ones as
weights-only files as it logs new ones: a 300-epoch CCT-7/3x1 run then stores about a third of
the bytes (benchmarks/results_checkpoint_size.md).
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import torch

from statmech_nn.errors import CheckpointError
from statmech_nn.fileio import atomic_write, atomic_write_text, fsync_dir
from statmech_nn.tracking.runs import get_run
from statmech_nn.tracking.uris import client, first_line

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
CONFIG_NAME = "config.json"
FULL_SUFFIX = ".pt"
WEIGHTS_SUFFIX = ".safetensors"
CHECKPOINT_RE = re.compile(r"^epoch_(\d{4,})(\.pt|\.safetensors)$")
"""The artifact name of a complete checkpoint, either form (temporary files are hidden)."""
DEFAULT_KEEP_RESUME = 2
"""Full resume states a training run keeps when its config does not say (``keep_resume``)."""
_META_JSON = ("model_config", "config", "metrics")
_META_PLAIN = ("format", "epoch")


def save_checkpoint(state: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Write ``state`` to ``path`` atomically: temporary file in the same folder, fsync, rename.

    A reader sees either the old file or the complete new one, never a partial write. Temporary
    files are hidden (``.name.*.tmp``) and removed on error. A ``.safetensors`` path stores the
    weights alone (:func:`save_weights`); any other path the whole state with ``torch.save``.
    """
    if Path(path).suffix == WEIGHTS_SUFFIX:
        return save_weights(state, path)
    return atomic_write(path, lambda fh: torch.save(dict(state), fh))


def _weight_tensors(state: Mapping[str, Any], where: str) -> dict[str, torch.Tensor]:
    """The ``model`` tensors of a state as contiguous CPU copies (safetensors shares no memory)."""
    weights = state.get("model")
    if not isinstance(weights, Mapping) or not all(
        isinstance(v, torch.Tensor) for v in weights.values()
    ):
        raise CheckpointError(
            f"checkpoint {where} holds no tensor-only model weights ('model') to store as "
            "safetensors"
        )
    return {str(k): v.detach().cpu().contiguous().clone() for k, v in weights.items()}


def _weights_metadata(state: Mapping[str, Any]) -> dict[str, str]:
    """The non-tensor entries a weights-only file keeps, as safetensors string metadata."""
    meta = {k: str(state[k]) for k in _META_PLAIN if k in state}
    meta.update({k: json.dumps(state[k], sort_keys=True) for k in _META_JSON if k in state})
    return meta


def save_weights(state: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Write the weights of ``state`` as safetensors, its configs as JSON metadata, atomically."""
    from safetensors.torch import save as to_bytes

    tensors = _weight_tensors(state, str(path))
    payload = to_bytes(tensors, metadata=_weights_metadata(state))
    return atomic_write(path, lambda fh: fh.write(payload))


def read_weights(path: str | os.PathLike) -> dict[str, Any]:
    """A weights-only checkpoint as a state dict (``model``, ``epoch``, configs), memory-mapped."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            meta = fh.metadata() or {}
            model = {name: fh.get_tensor(name) for name in fh.keys()}  # noqa: SIM118
        state: dict[str, Any] = {k: json.loads(meta[k]) for k in _META_JSON if k in meta}
    except Exception as exc:  # truncated header, bad JSON
        raise CheckpointError(
            f"checkpoint {path} is corrupt or truncated ({first_line(exc)}); resume from an "
            "earlier epoch or retrain"
        ) from exc
    if "format" in meta:
        state["format"] = meta["format"]
    if "epoch" in meta:
        state["epoch"] = int(meta["epoch"])
    state["model"] = model
    return state


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint of either form without pickle; :class:`CheckpointError` if unreadable.

    ``.pt`` files load with ``weights_only=True``; ``.safetensors`` files (:func:`read_weights`)
    give ``model``, ``epoch``, ``config``, ``model_config`` and ``metrics`` but no optimiser.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.suffix == WEIGHTS_SUFFIX:
        return read_weights(path)
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
    """The artifact file name of epoch ``epoch``'s full checkpoint."""
    return f"epoch_{epoch:04d}{FULL_SUFFIX}"


def weights_name(epoch: int) -> str:
    """The artifact file name of epoch ``epoch``'s weights-only checkpoint."""
    return f"epoch_{epoch:04d}{WEIGHTS_SUFFIX}"


def _config_text(config: Any) -> str:
    return json.dumps(config, indent=2, sort_keys=True)


def keep_resume_of(state: Mapping[str, Any]) -> int | None:
    """Full resume states the run of ``state`` keeps; ``None`` (keep all) unless it is resumable."""
    if "optimizer" not in state or "model" not in state:
        return None
    keep = (state.get("config") or {}).get("keep_resume", DEFAULT_KEEP_RESUME)
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
        raise CheckpointError(f"keep_resume must be a whole number >= 1, got {keep!r}")
    return keep


def log_checkpoint(run_id: str, state: Mapping[str, Any], epoch: int) -> str:
    """Store ``state`` as ``checkpoints/epoch_{E:04d}.pt`` of ``run_id`` (plus ``config.json``).

    Returns the artifact path. ``state["config"]``, if present, is also written as
    ``checkpoints/config.json`` so the run's configuration is readable without torch. A full
    training state (with ``optimizer``) in a local artifact store then rewrites the run's full
    states older than the newest ``config["keep_resume"]`` (default 2) as weights-only
    safetensors (:func:`retain_resume_states`); remote stores cannot delete, so they keep all.
    """
    name = checkpoint_name(epoch)
    config = state.get("config")
    keep = keep_resume_of(state)
    local = local_artifact_dir(run_id)
    if local is not None:
        folder = local / CHECKPOINT_DIR
        if config is not None:
            atomic_write_text(folder / CONFIG_NAME, _config_text(config))
        save_checkpoint(state, folder / name)
        if keep is not None:
            retain_resume_states(folder, keep)
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


def _by_epoch(names: Sequence[str]) -> dict[int, str]:
    """Epoch -> checkpoint file name among ``names``; the full state wins over weights-only."""
    found: dict[int, str] = {}
    for name in sorted(names, key=lambda n: n.endswith(FULL_SUFFIX)):
        if m := CHECKPOINT_RE.match(name):
            found[int(m.group(1))] = name
    return found


def retain_resume_states(folder: str | os.PathLike, keep: int) -> list[int]:
    """Rewrite the full training states in ``folder`` older than the newest ``keep`` as weights.

    Each is written as ``epoch_EEEE.safetensors`` first, then its ``.pt`` removed, so an
    interruption leaves both forms (readers take the full one; the next call finishes the job).
    States that are not resumable or cannot be read are left alone. Returns the epochs rewritten.
    """
    folder = Path(folder)
    full = sorted(e for e, n in _by_epoch(_names_in(folder)).items() if n.endswith(FULL_SUFFIX))
    rewritten = []
    for epoch in full[: max(len(full) - keep, 0)]:
        path = folder / checkpoint_name(epoch)
        try:
            state = read_checkpoint(path)
        except CheckpointError as exc:
            log.warning("keeping checkpoint %s as it is: %s", path.name, exc)
            continue
        if keep_resume_of(state) is None:
            continue
        save_weights(state, folder / weights_name(epoch))
        path.unlink()
        rewritten.append(epoch)
    if rewritten:
        fsync_dir(folder)
    return rewritten


def _names_in(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir()] if folder.is_dir() else []


def _checkpoint_files(run_id: str) -> dict[int, str]:
    """Epoch -> file name of the complete checkpoints of ``run_id`` (temporary files ignored)."""
    local = local_artifact_dir(run_id)
    if local is not None:
        return _by_epoch(_names_in(local / CHECKPOINT_DIR))
    listed = client().list_artifacts(run_id, CHECKPOINT_DIR)
    return _by_epoch([Path(f.path).name for f in listed])


def list_checkpoints(run_id: str) -> list[int]:
    """Epochs of the complete checkpoints of ``run_id`` (either form), ascending."""
    return sorted(_checkpoint_files(run_id))


def checkpoint_path(run_id: str, epoch: int | None = None) -> Path:
    """A local file holding the checkpoint of ``epoch`` (default: the last) of ``run_id``.

    The full state if the run still has it, else the weights-only file. Local artifact stores
    return the file in place; remote ones download it to a temporary folder.
    """
    files = _checkpoint_files(run_id)
    epochs = sorted(files)
    if not epochs:
        raise CheckpointError(
            f"MLflow run {run_id} has no checkpoints (artifacts {CHECKPOINT_DIR}/epoch_*.pt or "
            "epoch_*.safetensors); is it a training run?"
        )
    if epoch is None:
        epoch = epochs[-1]
    if epoch not in files:
        raise CheckpointError(
            f"MLflow run {run_id} has no checkpoint of epoch {epoch}; it has epochs {epochs}"
        )
    local = local_artifact_dir(run_id)
    if local is not None:
        return local / CHECKPOINT_DIR / files[epoch]
    import mlflow

    dst = tempfile.mkdtemp(prefix="statmech-ckpt-")
    got = mlflow.artifacts.download_artifacts(
        run_id=run_id, artifact_path=f"{CHECKPOINT_DIR}/{files[epoch]}", dst_path=dst
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
