"""``train(config)``: prepare the run, start or resume it in MLflow, train epoch by epoch.

Each epoch reseeds torch, numpy, ``random`` and the DataLoader's generator from
``(seed, epoch, rank)``, so a run resumed from the checkpoint of epoch ``e`` continues exactly as
the uninterrupted run would have.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from statmech_nn import tracking
from statmech_nn.data import data_for_config
from statmech_nn.errors import ConfigError, StatmechError
from statmech_nn.fileio import remove_stale_temporaries
from statmech_nn.tracking.http import TRAINING, http_limits
from statmech_nn.tracking.uris import first_line
from statmech_nn.train import records
from statmech_nn.train.config import RUNTIME_FIELDS, TrainConfig
from statmech_nn.train.determinism import (
    deterministic,
    epoch_seed,
    restore_rng,
    seed_everything,
)
from statmech_nn.train.dist import (
    Dist,
    broadcast,
    dist_from_env,
    process_group,
    resolve_device,
)
from statmech_nn.train.epoch import checkpoint_of, log_new_metrics, run_epoch
from statmech_nn.train.objectives import model_overrides, objective_sets
from statmech_nn.train.schedule import Schedule
from statmech_nn.train.state import EpochCallback, TrainState
from statmech_nn.train.steps import (
    make_optimizer,
    make_scaler,
)

__all__ = ["EpochCallback", "TrainState", "train"]


def train(
    config: TrainConfig | None = None,
    tracking_uri: str | None = None,
    resume_run_id: str | None = None,
    on_epoch_end: EpochCallback | None = None,
    force_resume: bool = False,
) -> str:
    """Train as ``config`` says (or resume ``resume_run_id``) and return the MLflow run id.

    Resuming continues the run in place from its last complete checkpoint with the stored config
    (only ``device`` and ``workers`` are taken from ``config``); a run still training elsewhere
    is refused (``force_resume`` overrides that for a run of another host). Each epoch is
    checkpointed, then its metrics logged; a resume logs each metric step the run lacks, and
    only those. ``on_epoch_end(epoch, metrics)`` is called on rank 0 after each epoch's records.
    A non-finite loss stops training with :class:`TrainingDiverged`; the run is marked FAILED
    and its last good checkpoint kept. A tracking server lost mid-run stops training with
    :class:`~statmech_nn.tracking.TrackingLost` within a bounded time (``tracking.http``), the
    epoch's state kept locally. A configuration that cannot work raises :class:`ConfigError`
    before any run is created.
    """
    if config is None and resume_run_id is None:
        raise ConfigError("give a TrainConfig, or a run id to resume")
    dist = dist_from_env()
    if config is not None:
        resolve_device(config.device, dist)  # no GPU: refused before the store is touched
    device = config.device if config is not None else None
    with http_limits(TRAINING), process_group(dist, device), deterministic():
        return _train(config, tracking_uri, resume_run_id, on_epoch_end, dist, force_resume)


def _train(
    config: TrainConfig | None,
    tracking_uri: str | None,
    resume_run_id: str | None,
    on_epoch_end: EpochCallback | None,
    dist: Dist,
    force_resume: bool = False,
) -> str:
    resume = None
    if resume_run_id is not None:
        resume = _read_resume_state(resume_run_id, tracking_uri, dist, force_resume)
    if resume is not None:
        config = _resumed_config(resume, config)
    assert config is not None
    state = _prepare(config, dist)
    if dist.main and resume_run_id is None:
        tracking.init_store(tracking_uri)
    if resume is not None:
        _restore(state, resume)
    state.net = _wrap_for_dist(state)
    with records.system_metrics(), _run_context(state, resume_run_id) as active:
        run_id = broadcast(active.info.run_id if dist.main else None, dist)
        if dist.main and resume_run_id is None:
            _record_start(state, run_id)
        elif dist.main and resume is not None:
            _catch_up_metrics(state, run_id, resume)
        epoch_log = records.EpochLog(state.config, state.start_epoch, on_epoch_end)
        for epoch in range(state.start_epoch, state.config.epochs):
            run_epoch(state, epoch, run_id, epoch_log)
        if dist.main:
            epoch_log.finish(run_id)
    return run_id


# -- before the first epoch ----------------------------------------------------------------------


def _read_resume_state(
    run_id: str, tracking_uri: str | None, dist: Dist, force: bool = False
) -> dict[str, Any]:
    """Rank 0 checks nobody trains ``run_id`` and finds its newest good checkpoint; every rank
    reads that file."""
    state: dict[str, Any] | None = None
    path = None
    if dist.main:
        tracking.init_store(tracking_uri)
        tracking.refuse_live_resume(tracking.get_run(run_id), force)
        _remove_stale_temporaries(run_id)
        state, path = records.load_resume_state(run_id)
    path = broadcast(str(path), dist)
    return state if state is not None else tracking.read_checkpoint(path)


def _remove_stale_temporaries(run_id: str) -> None:
    """Delete the hidden partial checkpoints a killed writer left (no writer is alive now)."""
    local = tracking.local_artifact_dir(run_id)
    if local is not None:
        remove_stale_temporaries(local / tracking.CHECKPOINT_DIR)


def _resumed_config(resume: Mapping[str, Any], given: TrainConfig | None) -> TrainConfig:
    """The run's stored config, with the caller's runtime fields (device, workers)."""
    stored = TrainConfig.from_dict(resume["config"])
    if given is None:
        return stored
    return dataclasses.replace(stored, **{k: getattr(given, k) for k in RUNTIME_FIELDS})


def _filled_from_data(config: TrainConfig, splits: Any) -> TrainConfig:
    """Class count, image size and (if unset) label smoothing from the data."""
    smoothing = config.label_smoothing
    if smoothing is None:
        smoothing = float(getattr(splits, "label_smoothing", 0.0) or 0.0)
    return dataclasses.replace(
        config,
        num_classes=splits.num_classes,
        img_size=splits.img_size,
        label_smoothing=smoothing,
    )


def _build_model(config: TrainConfig, device: torch.device) -> nn.Module:
    """The seeded, untrained model of ``config``; a model option that cannot work is one line."""
    from statmech_nn import models

    overrides = {**config.model_overrides, **model_overrides(config)}
    for key in ("attention_dropout", "stochastic_depth"):
        if getattr(config, key) is not None:
            overrides[key] = getattr(config, key)
    assert config.num_classes is not None  # filled from the data
    torch.manual_seed(config.seed)
    try:
        model = models.create(
            config.model,
            num_classes=config.num_classes,
            img_size=config.img_size,
            positional_embedding=config.positional_embedding,
            **overrides,
        )
    except StatmechError:
        raise
    except (TypeError, ValueError, RuntimeError) as exc:
        if not config.model_overrides:
            raise  # the model's own defaults fail: a bug, not a user mistake
        options = ", ".join(f"{k}={v!r}" for k, v in config.model_overrides.items())
        raise ConfigError(
            f"cannot build model {config.model} with {options}: {first_line(exc)}; change "
            "--model-option"
        ) from exc
    return model.to(device)


def _prepare(config: TrainConfig, dist: Dist) -> TrainState:
    """Device, data, model, optimiser, schedule and scaler of a (new or resumed) run."""
    device = resolve_device(config.device, dist)
    seed_everything(epoch_seed(config.seed, -1))
    splits = data_for_config(config.to_dict(), augment=config.augment)
    config = _filled_from_data(config, splits)
    cut = splits.limited(
        config.seed,
        train=config.limit_train,
        val=config.limit_eval,
        test=config.limit_eval,
        training_seeds=True,
    )
    train_set, val_set, test_set = objective_sets(config, splits, cut.train, cut.val, cut.test)
    model = _build_model(config, device)
    optimizer = make_optimizer(model, config.lr, config.weight_decay)
    per_rank = math.ceil(len(cut.train) / dist.world)  # type: ignore[arg-type]
    return TrainState(
        config=config,
        dist=dist,
        device=device,
        splits=splits,
        train_set=train_set,
        val_set=val_set,
        test_set=test_set,
        model=model,
        optimizer=optimizer,
        schedule=Schedule(config, optimizer, math.ceil(per_rank / config.batch_size)),
        scaler=make_scaler(device, config.amp),
    )


def _restore(state: TrainState, resume: Mapping[str, Any]) -> None:
    """Weights, optimiser, schedule, scaler and RNGs of a training checkpoint."""
    from statmech_nn import models

    models.load_weights(state.model, resume["model"])
    state.optimizer.load_state_dict(resume["optimizer"])
    state.schedule.load_state_dict(resume["scheduler"])
    if state.scaler is not None and resume.get("scaler"):
        state.scaler.load_state_dict(resume["scaler"])
    restore_rng(resume["rng"])
    state.start_epoch = int(resume["epoch"])


def _wrap_for_dist(state: TrainState) -> nn.Module:
    if not state.dist.enabled:
        return state.model
    device = state.device
    return nn.parallel.DistributedDataParallel(
        state.model, device_ids=[device.index] if device.type == "cuda" else None
    )


def _run_context(state: TrainState, resume_run_id: str | None) -> Any:
    """The MLflow run (new, or the resumed one) on rank 0; nothing on the other ranks."""
    if not state.dist.main:
        return contextlib.nullcontext()
    config = state.config
    resumed = state.start_epoch if resume_run_id is not None else None
    return tracking.run(
        config.experiment,
        run_name=f"{config.model}-{config.dataset}" if resume_run_id is None else None,
        tags=records.run_tags(config, resumed),
        resume_run_id=resume_run_id,
    )


def _record_start(state: TrainState, run_id: str) -> None:
    """Params, dataset and the checkpoint of the untrained weights (epoch 0) of a new run."""
    full_config = state.full_config
    records.log_start(state.config, full_config, state.dist.world, state.splits)
    tracking.log_checkpoint(run_id, checkpoint_of(state, 0, None, {}), 0)


def _catch_up_metrics(state: TrainState, run_id: str, resume: Mapping[str, Any]) -> None:
    """Learn which steps the run has logged; log the resumed checkpoint's metrics if missing.

    A process killed between an epoch's checkpoint and its metrics left that step unlogged.
    """
    state.logged = tracking.logged_steps(run_id)
    epoch = int(resume["epoch"])
    if epoch > 0:
        log_new_metrics(state, dict(resume.get("metrics") or {}), epoch)
