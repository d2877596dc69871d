"""Phase 1 (METHODS.md section 2): train a network, tracked in MLflow, resumable bit for bit.

``train(config)`` runs AdamW with a linear warm-up and a cosine decay to ``min_lr``, cross-entropy
with label smoothing (soft-target cross-entropy on the mixup/cutmix targets of the ``cct``
preset, which already fold the smoothing in), optional gradient
clipping, AMP (float16) on CUDA and optional bfloat16 autocast on CPU. It logs the whole config
as params, per-epoch metrics and a checkpoint of the untrained weights (epoch 0) and of every
epoch (see :mod:`statmech_nn.tracking`).

Reproducibility: every epoch starts by reseeding torch, numpy, ``random`` and the DataLoader's
generator from ``(seed, epoch, rank)``. The data order, augmentation and dropout of epoch ``e``
therefore depend only on the seed and ``e``, and a run resumed from the checkpoint of epoch ``e``
(model, optimiser, schedule, scaler) continues exactly as the uninterrupted run would have: on
CPU the final weights are equal bit for bit. RNG states are stored in checkpoints as well.

Distributed: under ``torchrun`` (``WORLD_SIZE > 1``) the model is wrapped in DDP (gloo on CPU,
nccl on CUDA), each rank reads its shard through a ``DistributedSampler``, and only rank 0
evaluates, logs to MLflow and writes checkpoints. ``batch_size`` is per process.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import random
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, RandomSampler

from statmech_nn import tracking
from statmech_nn.data.splits import subset
from statmech_nn.errors import CheckpointError, TrainingDiverged

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "statmech-nn.checkpoint/1"
SCHEDULE_UNITS = ("iteration", "epoch")
_RUNTIME_FIELDS = ("device", "workers")


@dataclass
class TrainConfig:
    """Everything that defines a training run; logged as MLflow params and stored in checkpoints.

    ``img_size`` and ``num_classes`` left at ``None`` are filled from the dataset.
    ``label_smoothing=None`` takes the augmentation preset's value. ``limit_train`` /
    ``limit_eval`` keep a seeded random subset of that many samples (smoke tests, quick looks).
    ``schedule_per`` sets whether the learning rate moves every iteration (fractional epochs) or
    once per epoch (as timm does).
    """

    model: str = "cct_2_3x2_32"
    dataset: str = "digits"
    data_root: str | None = None
    download: bool = False
    img_size: int | None = None
    num_classes: int | None = None
    positional_embedding: str = "learnable"
    attention_dropout: float | None = None
    stochastic_depth: float | None = None
    model_overrides: dict[str, Any] = field(default_factory=dict)
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    warmup_lr: float = 1e-6
    min_lr: float = 1e-5
    cooldown_epochs: float = 0.0
    schedule_per: str = "iteration"
    label_smoothing: float | None = None
    augment: str = "none"
    grad_clip: float | None = None
    amp: bool = True
    bf16: bool = False
    seed: int = 0
    device: str = "auto"
    workers: int = 0
    experiment: str = "statmech-nn"
    val_fraction: float = 0.1
    dataset_options: dict[str, Any] = field(default_factory=dict)
    checkpoint_every: int = 1
    limit_train: int | None = None
    limit_eval: int | None = None
    recipe: str | None = None

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.schedule_per not in SCHEDULE_UNITS:
            raise ValueError(f"schedule_per must be one of {SCHEDULE_UNITS}")
        if self.checkpoint_every < 1:
            raise ValueError(f"checkpoint_every must be >= 1, got {self.checkpoint_every}")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able copy."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrainConfig:
        """Build from a dict (unknown keys, e.g. ``model_config`` of a checkpoint, ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})


# -- data ---------------------------------------------------------------------------------------


def data_for_config(config: Mapping[str, Any], augment: str = "none"):
    """The data ``Splits`` of a training config (e.g. a run's), by default without augmentation.

    Same dataset, root, image size, validation fraction and seed as in training, so the
    validation/test samples are exactly the run's.
    """
    from statmech_nn import data

    return data.load(
        config["dataset"],
        root=config.get("data_root"),
        download=bool(config.get("download", False)),
        img_size=config.get("img_size"),
        val_fraction=config.get("val_fraction", 0.1),
        seed=config.get("seed", 0),
        augment=augment,
        **dict(config.get("dataset_options") or {}),
    )


def _epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    return (seed * 1_000_003 + epoch * 7919 + rank * 104_729) % (2**63 - 1)


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def _worker_init(_: int) -> None:
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


# -- schedule -----------------------------------------------------------------------------------


def lr_at(config: TrainConfig, t: float) -> float:
    """Learning rate at (fractional) epoch ``t``: linear warm-up, cosine, cool-down at ``min_lr``.

    ``warmup_lr`` at ``t = 0`` rising linearly to ``lr`` at ``t = warmup_epochs``, then
    ``min_lr + (lr - min_lr) (1 + cos(pi p)) / 2`` with ``p`` going from 0 to 1 between
    ``warmup_epochs`` and ``epochs - cooldown_epochs``, then ``min_lr`` to the end.
    """
    warm = config.warmup_epochs
    if warm > 0 and t < warm:
        return config.warmup_lr + (config.lr - config.warmup_lr) * t / warm
    span = max(config.epochs - config.cooldown_epochs - warm, 1e-12)
    p = min(max((t - warm) / span, 0.0), 1.0)
    return config.min_lr + 0.5 * (config.lr - config.min_lr) * (1.0 + math.cos(math.pi * p))


class Schedule:
    """Sets the optimiser's learning rate from :func:`lr_at`; its state is the step count."""

    def __init__(self, config: TrainConfig, optimizer: torch.optim.Optimizer, steps: int) -> None:
        self.config = config
        self.optimizer = optimizer
        self.steps_per_epoch = max(steps, 1)
        self.step_count = 0

    def current(self) -> float:
        epoch, i = divmod(self.step_count, self.steps_per_epoch)
        t = epoch + (i / self.steps_per_epoch if self.config.schedule_per == "iteration" else 0)
        return lr_at(self.config, t)

    def apply(self) -> float:
        lr = self.current()
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def step(self) -> None:
        self.step_count += 1

    def state_dict(self) -> dict[str, int]:
        return {"step": self.step_count, "steps_per_epoch": self.steps_per_epoch}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        self.step_count = int(state["step"])


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: no weight decay on biases, norms (1-D) and the positional embedding."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or "positional" in name else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


# -- state --------------------------------------------------------------------------------------


def _rng_state(loader_gen: torch.Generator | None) -> dict[str, Any]:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "python": list(_to_lists(random.getstate())),
    }
    if loader_gen is not None:
        state["loader"] = loader_gen.get_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _to_lists(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_to_lists(v) for v in value]
    return value


def _to_tuples(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_to_tuples(v) for v in value)
    return value


def _restore_rng(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    npst = state["numpy"]
    keys = npst["keys"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, npst["pos"], npst["has_gauss"], npst["gauss"]))
    random.setstate(_to_tuples(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _cpu(tree: Any) -> Any:
    if isinstance(tree, torch.Tensor):
        return tree.detach().cpu().clone()
    if isinstance(tree, dict):
        return {k: _cpu(v) for k, v in tree.items()}
    if isinstance(tree, list | tuple):
        return type(tree)(_cpu(v) for v in tree)
    return tree


# -- distributed --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def _dist_from_env() -> _Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Dist()
    return _Dist(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))


def _resolve_device(name: str, dist: _Dist) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError("--device cuda was asked for, but torch sees no CUDA device")
        if dist.enabled:
            return torch.device("cuda", dist.local_rank)
    return torch.device(name)


def _broadcast(value: Any, dist: _Dist) -> Any:
    if not dist.enabled:
        return value
    box = [value]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


# -- the loop -----------------------------------------------------------------------------------


def _soft_ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return torch.sum(-target * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()


def _set_deterministic(mode: bool, warn_only: bool) -> None:
    # The public setter also imports torch._inductor (seconds) to configure torch.compile,
    # which training does not use; the C setter is all that eager mode reads.
    setter = getattr(torch._C, "_set_deterministic_algorithms", None)
    if setter is None:
        torch.use_deterministic_algorithms(mode, warn_only=warn_only)
    else:
        setter(mode, warn_only=warn_only)


@contextlib.contextmanager
def _deterministic() -> Iterator[None]:
    """Deterministic kernels while training (warn where none exists); the old mode restored."""
    before = torch.are_deterministic_algorithms_enabled()
    warn_before = torch.is_deterministic_algorithms_warn_only_enabled()
    _set_deterministic(True, warn_only=True)
    try:
        yield
    finally:
        _set_deterministic(before, warn_only=warn_before)


def _autocast(device: torch.device, config: TrainConfig):
    if device.type == "cuda" and config.amp:
        return torch.autocast("cuda", dtype=torch.float16)
    if device.type == "cpu" and config.bf16:
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def evaluate(
    model: nn.Module, dataset: Dataset, config: TrainConfig, device: torch.device
) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` on ``dataset`` (eval mode, no smoothing)."""
    was_training = model.training
    model.eval()
    loader = DataLoader(dataset, batch_size=max(config.batch_size, 256), shuffle=False)
    loss_sum, correct, count = 0.0, 0, 0
    for x, y in loader:
        x, y = x.to(device), torch.as_tensor(y).to(device)
        with _autocast(device, config):
            logits = model(x)
        loss_sum += F.cross_entropy(logits.float(), y, reduction="sum").item()
        correct += (logits.argmax(-1) == y).sum().item()
        count += len(y)
    model.train(was_training)
    return loss_sum / max(count, 1), correct / max(count, 1)


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _flat_params(config: Mapping[str, Any]) -> dict[str, str]:
    return {
        k: json.dumps(v, sort_keys=True) if isinstance(v, dict | list) else str(v)
        for k, v in config.items()
    }


def _log_dataset(splits: Any, config: TrainConfig) -> None:
    import mlflow
    from mlflow.data.code_dataset_source import CodeDatasetSource
    from mlflow.data.meta_dataset import MetaDataset

    info = {}
    with contextlib.suppress(Exception):
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
    mlflow.log_input(MetaDataset(source, name=config.dataset), context="training")
    if info:
        mlflow.log_dict(json.loads(json.dumps(info, default=str)), "data/info.json")


def _checkpoint_state(
    epoch: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    schedule: Schedule,
    scaler: torch.amp.GradScaler | None,
    config: dict[str, Any],
    model_config: dict[str, Any],
    loader_gen: torch.Generator | None,
    metrics: Mapping[str, float],
) -> dict[str, Any]:
    return {
        "format": CHECKPOINT_FORMAT,
        "epoch": epoch,
        "model": _cpu(model.state_dict()),
        "model_config": model_config,
        "config": config,
        "optimizer": _cpu(optimizer.state_dict()),
        "scheduler": schedule.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else {},
        "rng": _rng_state(loader_gen),
        "metrics": {k: float(v) for k, v in metrics.items()},
    }


def _load_resume_state(run_id: str) -> tuple[dict[str, Any], Path]:
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
        if state.get("format") != CHECKPOINT_FORMAT or "optimizer" not in state:
            raise CheckpointError(
                f"checkpoint of epoch {epoch} of run {run_id} is not a statmech-nn training "
                "checkpoint; it cannot be resumed"
            )
        return state, path
    assert last_error is not None
    raise last_error


EpochCallback = Callable[[int, Mapping[str, float]], None]


def train(
    config: TrainConfig | None = None,
    tracking_uri: str | None = None,
    resume_run_id: str | None = None,
    on_epoch_end: EpochCallback | None = None,
) -> str:
    """Train as ``config`` says (or resume ``resume_run_id``) and return the MLflow run id.

    Resuming continues the run in place from its last complete checkpoint with the stored config
    (only ``device`` and ``workers`` are taken from ``config``). ``on_epoch_end(epoch, metrics)``
    is called on rank 0 after each epoch's checkpoint. A non-finite loss stops training with
    :class:`TrainingDiverged`; the run is marked FAILED and its last good checkpoint kept.
    """
    if config is None and resume_run_id is None:
        raise ValueError("give a TrainConfig, or a run id to resume")
    dist = _dist_from_env()
    if dist.enabled and not torch.distributed.is_initialized():
        on_gpu = torch.cuda.is_available() and (config is None or config.device != "cpu")
        backend = "nccl" if on_gpu else "gloo"
        torch.distributed.init_process_group(backend=backend)
    try:
        with _deterministic():
            return _train(config, tracking_uri, resume_run_id, on_epoch_end, dist)
    finally:
        if dist.enabled and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _train(
    config: TrainConfig | None,
    tracking_uri: str | None,
    resume_run_id: str | None,
    on_epoch_end: EpochCallback | None,
    dist: _Dist,
) -> str:
    resume_state: dict[str, Any] | None = None
    if resume_run_id is not None:
        path = None
        if dist.main:
            tracking.init_store(tracking_uri)
            tracking.get_run(resume_run_id)
            resume_state, path = _load_resume_state(resume_run_id)
        path = _broadcast(str(path), dist)
        if resume_state is None:
            resume_state = tracking.read_checkpoint(path)
        stored = TrainConfig.from_dict(resume_state["config"])
        if config is not None:
            stored = dataclasses.replace(stored, **{k: getattr(config, k) for k in _RUNTIME_FIELDS})
        config = stored
    assert config is not None

    device = _resolve_device(config.device, dist)
    _seed_everything(_epoch_seed(config.seed, -1))
    splits = data_for_config(config.to_dict(), augment=config.augment)
    config = dataclasses.replace(
        config,
        num_classes=splits.num_classes,
        img_size=splits.img_size,
        label_smoothing=(
            config.label_smoothing
            if config.label_smoothing is not None
            else float(getattr(splits, "label_smoothing", 0.0) or 0.0)
        ),
    )
    train_set = subset(splits.train, config.limit_train, config.seed)
    val_set = subset(splits.val, config.limit_eval, config.seed + 1)
    test_set = subset(splits.test, config.limit_eval, config.seed + 2)

    from statmech_nn import models

    overrides = dict(config.model_overrides)
    for key in ("attention_dropout", "stochastic_depth"):
        if getattr(config, key) is not None:
            overrides[key] = getattr(config, key)
    torch.manual_seed(config.seed)
    model = models.create(
        config.model,
        num_classes=config.num_classes,
        img_size=config.img_size,
        positional_embedding=config.positional_embedding,
        **overrides,
    ).to(device)
    model_config = dict(model.config)
    if dist.main and resume_run_id is None:
        tracking.init_store(tracking_uri)
    full_config = {**config.to_dict(), "model_config": model_config}

    optimizer = torch.optim.AdamW(_param_groups(model, config.weight_decay), lr=config.lr)
    per_rank = math.ceil(len(train_set) / dist.world)
    schedule = Schedule(config, optimizer, math.ceil(per_rank / config.batch_size))
    use_scaler = device.type == "cuda" and config.amp
    scaler = torch.amp.GradScaler("cuda", enabled=use_scaler) if use_scaler else None
    start_epoch = 0
    if resume_state is not None:
        models.load_weights(model, resume_state["model"])
        optimizer.load_state_dict(resume_state["optimizer"])
        schedule.load_state_dict(resume_state["scheduler"])
        if scaler is not None and resume_state.get("scaler"):
            scaler.load_state_dict(resume_state["scaler"])
        _restore_rng(resume_state["rng"])
        start_epoch = int(resume_state["epoch"])

    net: nn.Module = model
    if dist.enabled:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )

    run_ctx = contextlib.nullcontext()
    if dist.main:
        tags = {"model": config.model, "dataset": config.dataset, "recipe": str(config.recipe)}
        commit = _git_commit()
        if commit:
            tags["git_commit"] = commit
        if resume_run_id is not None:
            tags["resumed_from_epoch"] = str(start_epoch)
        run_ctx = tracking.run(
            config.experiment,
            run_name=f"{config.model}-{config.dataset}" if resume_run_id is None else None,
            tags=tags,
            resume_run_id=resume_run_id,
        )
    with run_ctx as active:
        run_id = _broadcast(active.info.run_id if dist.main else None, dist)
        if dist.main and resume_run_id is None:
            import mlflow

            mlflow.log_params(_flat_params(full_config))
            mlflow.log_param("world_size", dist.world)
            _log_dataset(splits, config)
            tracking.log_checkpoint(
                run_id,
                _checkpoint_state(
                    0, model, optimizer, schedule, scaler, full_config, model_config, None, {}
                ),
                0,
            )
        for epoch in range(start_epoch, config.epochs):
            metrics = _train_epoch(
                epoch,
                net,
                model,
                optimizer,
                schedule,
                scaler,
                train_set,
                config,
                device,
                dist,
                getattr(splits, "batch_transform", None),
            )
            gen = metrics.pop("_gen")
            if dist.main:
                metrics["val_loss"], metrics["val_acc"] = evaluate(model, val_set, config, device)
                _, metrics["test_acc"] = evaluate(model, test_set, config, device)
                _log_metrics(metrics, epoch + 1)
                done = epoch + 1
                if done % config.checkpoint_every == 0 or done == config.epochs:
                    tracking.log_checkpoint(
                        run_id,
                        _checkpoint_state(
                            done,
                            model,
                            optimizer,
                            schedule,
                            scaler,
                            full_config,
                            model_config,
                            gen,
                            metrics,
                        ),
                        done,
                    )
                if on_epoch_end is not None:
                    on_epoch_end(done, metrics)
            if dist.enabled:
                torch.distributed.barrier()
    return run_id


def _log_metrics(metrics: Mapping[str, float], step: int) -> None:
    import mlflow

    mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)


def _train_epoch(
    epoch: int,
    net: nn.Module,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    schedule: Schedule,
    scaler: torch.amp.GradScaler | None,
    train_set: Dataset,
    config: TrainConfig,
    device: torch.device,
    dist: _Dist,
    batch_transform: Callable[..., Any] | None,
) -> dict[str, Any]:
    from tqdm.auto import tqdm

    _seed_everything(_epoch_seed(config.seed, epoch, dist.rank))
    gen = torch.Generator().manual_seed(_epoch_seed(config.seed, epoch))
    if dist.enabled:
        sampler = torch.utils.data.DistributedSampler(
            train_set, num_replicas=dist.world, rank=dist.rank, shuffle=True, seed=config.seed
        )
        sampler.set_epoch(epoch)
    else:
        sampler = RandomSampler(train_set, generator=gen)
    loader = DataLoader(
        train_set,
        batch_size=config.batch_size,
        sampler=sampler,
        num_workers=config.workers,
        worker_init_fn=_worker_init if config.workers > 0 else None,
        generator=gen,
        pin_memory=device.type == "cuda",
    )
    net.train()
    loss_sum = torch.zeros((), dtype=torch.float64)
    correct = torch.zeros((), dtype=torch.int64)
    count = 0
    disable = not dist.main or bool(os.environ.get("TQDM_DISABLE")) or not sys.stderr.isatty()
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{config.epochs}", leave=False, disable=disable)
    start = time.perf_counter()
    for x, y in bar:
        x, y = x.to(device, non_blocking=True), torch.as_tensor(y).to(device, non_blocking=True)
        lr = schedule.apply()
        target = None
        if batch_transform is not None:
            x, target = batch_transform(x, y)
        with _autocast(device, config):
            logits = net(x)
        if target is not None:
            loss = _soft_ce(logits, target)
        else:
            loss = F.cross_entropy(logits.float(), y, label_smoothing=config.label_smoothing or 0)
        _check_finite(loss, epoch, dist)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            if config.grad_clip:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            if config.grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
        schedule.step()
        n = len(y)
        loss_sum += loss.detach().double().cpu() * n
        correct += (logits.detach().argmax(-1) == y).sum().cpu()
        count += n
        bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lr:.2e}")
    bar.close()
    elapsed = time.perf_counter() - start
    totals = torch.tensor(
        [loss_sum.item(), float(correct.item()), float(count)], dtype=torch.float64
    )
    if dist.enabled:
        torch.distributed.all_reduce(totals)
    return {
        "train_loss": totals[0].item() / max(totals[2].item(), 1),
        "train_acc": totals[1].item() / max(totals[2].item(), 1),
        "lr": optimizer.param_groups[0]["lr"],
        "images_per_s": totals[2].item() / max(elapsed, 1e-9),
        "_gen": gen,
    }


def _check_finite(loss: torch.Tensor, epoch: int, dist: _Dist) -> None:
    bad = torch.tensor([0.0 if torch.isfinite(loss).item() else 1.0])
    if dist.enabled:
        torch.distributed.all_reduce(bad)
    if bad.item() > 0:
        raise TrainingDiverged(
            f"the training loss became non-finite ({loss.item()}) in epoch {epoch + 1}; the run "
            f"is marked FAILED and keeps its last good checkpoint. Lower --lr, "
            "set a gradient clip, or turn off --bf16/AMP"
        )
