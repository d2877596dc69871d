"""``train(config)``: prepare the run, start or resume it in MLflow, train epoch by epoch.

Each epoch reseeds torch, numpy, ``random`` and the DataLoader's generator from
``(seed, epoch, rank)``, so a run resumed from the checkpoint of epoch ``e`` continues exactly as
the uninterrupted run would have.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, RandomSampler

from statmech_nn import tracking
from statmech_nn.data import data_for_config
from statmech_nn.errors import ConfigError, StatmechError, TrainingDiverged
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
    worker_init,
)
from statmech_nn.train.dist import (
    Dist,
    all_reduce_sum,
    barrier,
    broadcast,
    dist_from_env,
    process_group,
    resolve_device,
)
from statmech_nn.train.schedule import Schedule
from statmech_nn.train.steps import (
    Step,
    Totals,
    evaluate,
    make_optimizer,
    make_scaler,
    training_state,
)

EpochCallback = Callable[[int, Mapping[str, float]], None]


@dataclass
class TrainState:
    """Everything one training process holds between epochs."""

    config: TrainConfig
    dist: Dist
    device: torch.device
    splits: Any
    train_set: Dataset
    val_set: Dataset
    test_set: Dataset
    model: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    scaler: torch.amp.GradScaler | None
    start_epoch: int = 0
    net: nn.Module | None = None  # the model, or its DDP wrapper
    logged: dict[str, set[int]] = field(default_factory=dict)  # rank 0: steps already in MLflow

    @property
    def model_config(self) -> dict[str, Any]:
        return dict(self.model.config)  # type: ignore[arg-type]

    @property
    def full_config(self) -> dict[str, Any]:
        """The config as logged and checkpointed: every field plus the model's own config."""
        return {**self.config.to_dict(), "model_config": self.model_config}


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
            _run_epoch(state, epoch, run_id, epoch_log)
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

    overrides = dict(config.model_overrides)
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
    model = _build_model(config, device)
    optimizer = make_optimizer(model, config.lr, config.weight_decay)
    per_rank = math.ceil(len(cut.train) / dist.world)  # type: ignore[arg-type]
    return TrainState(
        config=config,
        dist=dist,
        device=device,
        splits=splits,
        train_set=cut.train,
        val_set=cut.val,
        test_set=cut.test,
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
    tracking.log_checkpoint(run_id, _checkpoint(state, 0, None, {}), 0)


def _catch_up_metrics(state: TrainState, run_id: str, resume: Mapping[str, Any]) -> None:
    """Learn which steps the run has logged; log the resumed checkpoint's metrics if missing.

    A process killed between an epoch's checkpoint and its metrics left that step unlogged.
    """
    state.logged = tracking.logged_steps(run_id)
    epoch = int(resume["epoch"])
    if epoch > 0:
        _log_new_metrics(state, dict(resume.get("metrics") or {}), epoch)


def _log_new_metrics(state: TrainState, metrics: Mapping[str, float], step: int) -> None:
    """Log the ``metrics`` not yet logged at ``step`` (a resumed epoch may have logged them)."""
    new = {k: v for k, v in metrics.items() if step not in state.logged.get(k, ())}
    if new:
        records.log_metrics(new, step)
        for key in new:
            state.logged.setdefault(key, set()).add(step)


def _checkpoint(
    state: TrainState, epoch: int, loader_gen: torch.Generator | None, metrics: Mapping[str, float]
) -> dict[str, Any]:
    return training_state(
        epoch,
        state.model,
        state.model_config,
        state.full_config,
        state.optimizer,
        state.schedule,
        state.scaler,
        loader_gen,
        metrics,
    )


# -- one epoch -----------------------------------------------------------------------------------


def _run_epoch(
    state: TrainState, epoch: int, run_id: str, on_epoch_end: EpochCallback | None
) -> None:
    """Train epoch ``epoch`` (0-based); rank 0 evaluates, logs and checkpoints it."""
    loader, loader_gen = epoch_loader(state, epoch)
    metrics = train_epoch(state, epoch, loader)
    if state.dist.main:
        config, done = state.config, epoch + 1
        metrics["val_loss"], metrics["val_acc"] = evaluate(
            state.model, state.val_set, config, state.device
        )
        _, metrics["test_acc"] = evaluate(state.model, state.test_set, config, state.device)
        _record_epoch(state, run_id, done, loader_gen, metrics)
        if on_epoch_end is not None:
            on_epoch_end(done, metrics)
    barrier(state.dist)


def _record_epoch(
    state: TrainState,
    run_id: str,
    done: int,
    loader_gen: torch.Generator,
    metrics: dict[str, float],
) -> None:
    """Checkpoint epoch ``done`` when due, then log its metrics (a kill between the two is
    caught up on resume); a lost tracking server keeps the epoch's state locally."""
    config = state.config
    snapshot = None
    try:
        if done % config.checkpoint_every == 0 or done == config.epochs:
            snapshot = _checkpoint(state, done, loader_gen, metrics)
            tracking.log_checkpoint(run_id, snapshot, done)
        _log_new_metrics(state, metrics, done)
    except Exception as exc:
        uri = tracking.current_uri()
        if not tracking.server_lost(uri):
            raise
        kept = tracking.keep_checkpoint(
            run_id, snapshot or _checkpoint(state, done, loader_gen, metrics), done
        )
        raise tracking.TrackingLost(
            f"lost the MLflow tracking server at {uri} while recording epoch {done} "
            f"({first_line(exc)}); the checkpoint of epoch {done} is kept in {kept}; run "
            f"{run_id} is marked FAILED by the next statmech-nn command that reaches the server, "
            f"then `statmech-nn train --resume {run_id}` continues it from its last logged "
            "checkpoint"
        ) from exc


def epoch_loader(state: TrainState, epoch: int) -> tuple[DataLoader, torch.Generator]:
    """Reseed everything for ``epoch``; the epoch's training loader and its generator."""
    config, dist = state.config, state.dist
    seed_everything(epoch_seed(config.seed, epoch, dist.rank))
    gen = torch.Generator().manual_seed(epoch_seed(config.seed, epoch))
    if dist.enabled:
        sampler: Any = torch.utils.data.DistributedSampler(
            state.train_set, num_replicas=dist.world, rank=dist.rank, shuffle=True, seed=config.seed
        )
        sampler.set_epoch(epoch)
    else:
        sampler = RandomSampler(state.train_set, generator=gen)  # type: ignore[arg-type]
    loader = DataLoader(
        state.train_set,
        batch_size=config.batch_size,
        sampler=sampler,
        num_workers=config.workers,
        worker_init_fn=worker_init if config.workers > 0 else None,
        generator=gen,
        pin_memory=state.device.type == "cuda",
    )
    return loader, gen


def _training_step(state: TrainState, epoch: int) -> Step:
    config = state.config
    assert state.net is not None
    return Step(
        net=state.net,
        params=state.model.parameters,
        optimizer=state.optimizer,
        schedule=state.schedule,
        scaler=state.scaler,
        device=state.device,
        amp=config.amp,
        bf16=config.bf16,
        label_smoothing=config.label_smoothing or 0,
        grad_clip=config.grad_clip,
        batch_transform=getattr(state.splits, "batch_transform", None),
        check=lambda loss: check_finite(loss, epoch, state.dist),
    )


def train_epoch(state: TrainState, epoch: int, loader: DataLoader) -> dict[str, float]:
    """One pass over ``loader``: ``train_loss``, ``train_acc``, ``lr``, ``images_per_s``."""
    from tqdm.auto import tqdm

    step = _training_step(state, epoch)
    step.net.train()
    totals = Totals()
    hide = not state.dist.main or bool(os.environ.get("TQDM_DISABLE")) or not sys.stderr.isatty()
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{state.config.epochs}", leave=False, disable=hide)
    start = time.perf_counter()
    for x, y in bar:
        loss, logits, labels, lr = step(x, y)
        totals.add(loss, logits, labels)
        bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lr:.2e}")
    bar.close()
    elapsed = time.perf_counter() - start
    loss_sum, correct, count = all_reduce_sum(totals.as_tensor(), state.dist).tolist()
    return {
        "train_loss": loss_sum / max(count, 1),
        "train_acc": correct / max(count, 1),
        "lr": state.optimizer.param_groups[0]["lr"],
        "images_per_s": count / max(elapsed, 1e-9),
    }


def check_finite(loss: torch.Tensor, epoch: int, dist: Dist) -> None:
    """Stop every rank with :class:`TrainingDiverged` when any rank's loss is not finite."""
    bad = torch.tensor([0.0 if torch.isfinite(loss).item() else 1.0])
    all_reduce_sum(bad, dist)
    if bad.item() > 0:
        raise TrainingDiverged(
            f"the training loss became non-finite ({loss.item()}) in epoch {epoch + 1}; the run "
            f"is marked FAILED and keeps its last good checkpoint. Lower --lr, "
            "set a gradient clip, or turn off --bf16/AMP"
        )
