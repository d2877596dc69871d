"""One training epoch: the loader, the steps, evaluation and what is recorded of it."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Mapping
from typing import Any

import torch
from torch.utils.data import DataLoader, RandomSampler

from statmech_nn import tracking
from statmech_nn.errors import TrainingDiverged
from statmech_nn.tracking.uris import first_line
from statmech_nn.train import records
from statmech_nn.train.determinism import (
    epoch_seed,
    seed_everything,
    worker_init,
)
from statmech_nn.train.dist import (
    Dist,
    all_reduce_sum,
    barrier,
)
from statmech_nn.train.state import EpochCallback, TrainState
from statmech_nn.train.steps import (
    Step,
    Totals,
    evaluate,
    training_state,
)


def log_new_metrics(state: TrainState, metrics: Mapping[str, float], step: int) -> None:
    """Log the ``metrics`` not yet logged at ``step`` (a resumed epoch may have logged them)."""
    new = {k: v for k, v in metrics.items() if step not in state.logged.get(k, ())}
    if new:
        records.log_metrics(new, step)
        for key in new:
            state.logged.setdefault(key, set()).add(step)


def checkpoint_of(
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


def run_epoch(
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
            snapshot = checkpoint_of(state, done, loader_gen, metrics)
            tracking.log_checkpoint(run_id, snapshot, done)
        log_new_metrics(state, metrics, done)
    except Exception as exc:
        uri = tracking.current_uri()
        if not tracking.server_lost(uri):
            raise
        kept = tracking.keep_checkpoint(
            run_id, snapshot or checkpoint_of(state, done, loader_gen, metrics), done
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
    set_epoch = getattr(state.train_set, "set_epoch", None)
    if set_epoch is not None:  # MLM masks are drawn per (seed, epoch, sample)
        set_epoch(epoch)
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
    """One pass over ``loader``: ``train_loss``, ``train_acc``, ``lr``, ``images_per_s``.

    Loss and accuracy are per sample, or per masked token for an MLM run; ``images_per_s``
    counts samples (sequences for text).
    """
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
    loss_sum, correct, count, samples = all_reduce_sum(totals.as_tensor(), state.dist).tolist()
    return {
        "train_loss": loss_sum / max(count, 1),
        "train_acc": correct / max(count, 1),
        "lr": state.optimizer.param_groups[0]["lr"],
        "images_per_s": samples / max(elapsed, 1e-9),
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
