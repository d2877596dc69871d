"""The one training step and what surrounds it, shared by training, fine-tuning and evaluation.

Parameter groups, the loss (hard labels with smoothing, or soft mixup/cutmix targets), autocast,
the optimiser + gradient-scaler step, evaluation of a model on a dataset, and the state a
checkpoint holds. Labels ``[B]`` are scored per sample; token targets ``[B, T]`` (masked-language
-model batches, :mod:`statmech_nn.data.mlm`) at their scored positions only, so loss and accuracy
are then per masked token.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from statmech_nn import batches
from statmech_nn.data.mlm import scored
from statmech_nn.train.determinism import rng_state

CHECKPOINT_FORMAT = "statmech-nn.checkpoint/1"
"""The ``format`` entry of every checkpoint this package writes."""

BatchTransform = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: no weight decay on biases, norms (1-D) and the positional embedding."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or "positional" in name else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def make_optimizer(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups`."""
    return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr)


def make_scaler(device: torch.device, amp: bool) -> torch.amp.GradScaler | None:
    """A float16 gradient scaler where AMP runs (CUDA with ``amp``), else ``None``."""
    if device.type == "cuda" and amp:
        return torch.amp.GradScaler("cuda", enabled=True)
    return None


def autocast(device: torch.device, amp: bool, bf16: bool = False) -> Any:
    """float16 autocast on CUDA with ``amp``, bfloat16 on CPU with ``bf16``, else nothing."""
    if device.type == "cuda" and amp:
        return torch.autocast("cuda", dtype=torch.float16)
    if device.type == "cpu" and bf16:
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def soft_target_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against class probabilities (mixup/cutmix targets, smoothing folded in)."""
    return F.cross_entropy(logits.float(), target)


def loss_of(
    logits: torch.Tensor,
    labels: torch.Tensor,
    target: torch.Tensor | None,
    label_smoothing: float,
) -> torch.Tensor:
    """The training loss: soft-target cross-entropy if ``target`` is given, else smoothed CE.

    Token targets are scored at their masked positions (a batch without any scores 0).
    """
    if target is not None:
        return soft_target_loss(logits, target)
    return label_loss(logits, labels, label_smoothing)


def label_loss(
    logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0
) -> torch.Tensor:
    """Mean float32 cross-entropy against hard labels (training and every readout fit).

    Token targets ``[B, T]`` are scored at their masked positions (a batch without any scores 0).
    """
    logits, labels = scored(logits, labels)
    if not len(labels):
        return logits.float().sum() * 0.0
    return F.cross_entropy(logits.float(), labels, label_smoothing=label_smoothing)


def to_device(x: Any, y: Any, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch on ``device``; labels as int64."""
    return batches.split_batch((x, y), device)


@dataclass
class Step:
    """One optimisation step: forward (autocast), loss, check, backward, clip, optimiser step.

    ``check(loss)`` runs before the backward pass (e.g. stop on a non-finite loss); ``schedule``
    is anything with ``apply() -> lr`` (set the coming step's rate) and ``step()``.
    """

    net: nn.Module
    params: Callable[[], Iterable[torch.Tensor]]
    optimizer: torch.optim.Optimizer
    schedule: Any
    scaler: torch.amp.GradScaler | None
    device: torch.device
    amp: bool = True
    bf16: bool = False
    label_smoothing: float = 0.0
    grad_clip: float | None = None
    batch_transform: BatchTransform | None = None
    check: Callable[[torch.Tensor], None] = lambda loss: None

    def __call__(self, x: Any, y: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
        """Train on one batch; returns ``(loss, logits, labels, lr)`` (detached loss/logits)."""
        x, y = to_device(x, y, self.device)
        lr = self.schedule.apply()
        target = None
        if self.batch_transform is not None:
            x, target = self.batch_transform(x, y)
        with autocast(self.device, self.amp, self.bf16):
            logits = batches.call_model(self.net, x)
        loss = loss_of(logits, y, target, self.label_smoothing)
        self.check(loss)
        backward_and_step(loss, self.optimizer, self.scaler, self.grad_clip, self.params)
        self.schedule.step()
        return loss.detach(), logits.detach(), y, lr


def backward_and_step(
    loss: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None = None,
    grad_clip: float | None = None,
    params: Callable[[], Iterable[torch.Tensor]] | None = None,
) -> None:
    """Zero the gradients, backward (scaled with a ``scaler``), clip ``params()``, step.

    The one optimiser/scaler update of training, fine-tuning and readout fitting.
    """
    optimizer.zero_grad(set_to_none=True)
    if scaler is None:
        loss.backward()
    else:
        scaler.scale(loss).backward()
    if grad_clip and params is not None:
        if scaler is not None:
            scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(params(), grad_clip)
    if scaler is None:
        optimizer.step()
    else:
        scaler.step(optimizer)
        scaler.update()


@dataclass
class Totals:
    """Running sums over batches: loss (float64, per scored prediction), correct top-1, the
    count of scored predictions (samples, or masked tokens) and of samples."""

    loss_sum: torch.Tensor = field(default_factory=lambda: torch.zeros((), dtype=torch.float64))
    correct: torch.Tensor = field(default_factory=lambda: torch.zeros((), dtype=torch.int64))
    count: int = 0
    samples: int = 0

    def add(self, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """Add a batch whose mean loss (per scored prediction) is ``loss``."""
        self.samples += len(labels)
        logits, labels = scored(logits, labels)
        n = len(labels)
        self.loss_sum += loss.double().cpu() * n
        self.correct += (logits.argmax(-1) == labels).sum().cpu()
        self.count += n

    def as_tensor(self) -> torch.Tensor:
        """``[loss sum, correct, count, samples]`` as float64 (to sum over ranks)."""
        values = [self.loss_sum.item(), float(self.correct.item()), float(self.count)]
        return torch.tensor([*values, float(self.samples)], dtype=torch.float64)


@torch.no_grad()
def evaluate_on(
    model: nn.Module,
    dataset: Dataset,
    device: torch.device,
    batch_size: int,
    amp: bool = False,
    bf16: bool = False,
) -> tuple[float, float]:
    """Mean cross-entropy and top-1 accuracy of ``model`` (eval mode, no smoothing) on ``dataset``.

    Per sample, or per masked token for token targets. The model's training flag is restored
    afterwards.
    """
    was_training = model.training
    model.eval()
    loss_sum, correct, count = 0.0, 0, 0
    for x, y in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        x, y = batches.split_batch((x, y), device)
        with autocast(device, amp, bf16):
            logits = batches.call_model(model, x)
        logits, y = scored(logits, y)
        loss_sum += F.cross_entropy(logits.float(), y.long(), reduction="sum").item()
        correct += int((logits.argmax(-1) == y).sum().item())
        count += len(y)
    model.train(was_training)
    return loss_sum / max(count, 1), correct / max(count, 1)


def evaluate(
    model: nn.Module, dataset: Dataset, config: Any, device: torch.device
) -> tuple[float, float]:
    """:func:`evaluate_on` with a training config's precision, in batches of at least 256."""
    return evaluate_on(
        model, dataset, device, max(config.batch_size, 256), amp=config.amp, bf16=config.bf16
    )


def accuracy(
    model: nn.Module, data: Dataset, device: str | torch.device = "cpu", batch_size: int = 256
) -> float:
    """Top-1 accuracy of ``model`` (moved to ``device``, eval mode, full precision) on ``data``."""
    dev = torch.device(device)
    model.to(dev)
    return evaluate_on(model, data, dev, batch_size)[1]


def cpu_copy(tree: Any) -> Any:
    """Detached CPU copies of the tensors in nested dicts / lists / tuples."""
    if isinstance(tree, torch.Tensor):
        return tree.detach().cpu().clone()
    if isinstance(tree, dict):
        return {k: cpu_copy(v) for k, v in tree.items()}
    if isinstance(tree, list | tuple):
        return type(tree)(cpu_copy(v) for v in tree)
    return tree


def model_state(
    epoch: int,
    model: nn.Module,
    model_config: Mapping[str, Any],
    config: Mapping[str, Any],
    metrics: Mapping[str, float] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A checkpoint of a model alone: format, epoch, weights, model and run configs, metrics.

    ``extra`` entries (e.g. a pruned model's ``masks``) come before ``metrics``. It loads with
    ``tracking.load_checkpoint``; it cannot be resumed (see :func:`training_state`).
    """
    state: dict[str, Any] = {
        "format": CHECKPOINT_FORMAT,
        "epoch": epoch,
        "model": cpu_copy(model.state_dict()),
        "model_config": dict(model_config),
        "config": dict(config),
    }
    state.update(extra)
    state["metrics"] = {k: float(v) for k, v in (metrics or {}).items()}
    return state


def training_state(
    epoch: int,
    model: nn.Module,
    model_config: Mapping[str, Any],
    config: Mapping[str, Any],
    optimizer: torch.optim.Optimizer,
    schedule: Any,
    scaler: torch.amp.GradScaler | None,
    loader_gen: torch.Generator | None,
    metrics: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """A resumable checkpoint: :func:`model_state` plus optimiser, schedule, scaler and RNGs."""
    return model_state(
        epoch,
        model,
        model_config,
        config,
        metrics,
        optimizer=cpu_copy(optimizer.state_dict()),
        scheduler=schedule.state_dict(),
        scaler=scaler.state_dict() if scaler is not None and scaler.is_enabled() else {},
        rng=rng_state(loader_gen),
    )


def is_training_state(state: Mapping[str, Any]) -> bool:
    """Whether a checkpoint state can be resumed (written by :func:`training_state`)."""
    return state.get("format") == CHECKPOINT_FORMAT and "optimizer" in state
