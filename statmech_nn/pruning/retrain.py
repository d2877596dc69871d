"""The short retraining under a network mask and the test accuracy, for network-level ANDC.

Kept apart on purpose: ``statmech_nn.train`` is getting the one training step (``fine_tune``,
``accuracy``) that will replace :func:`retrain` and :func:`evaluate_accuracy` here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from statmech_nn.errors import ConfigError, StatmechError

if TYPE_CHECKING:
    import torch
    from torch import nn
    from torch.utils.data import Dataset


@dataclass(frozen=True)
class RetrainSettings:
    """The short retraining under the mask: AdamW, cosine decay to 0 over ``epochs``."""

    epochs: int = 1
    lr: float = 1e-4
    weight_decay: float = 0.05
    batch_size: int = 64
    label_smoothing: float = 0.0
    seed: int = 0
    amp: bool = True

    def __post_init__(self) -> None:
        if self.epochs < 0:
            raise ConfigError(f"retraining epochs must be >= 0, got {self.epochs}")
        if not self.lr > 0:
            raise ConfigError(f"retraining lr must be > 0, got {self.lr}")
        if self.batch_size < 1:
            raise ConfigError(f"batch size must be >= 1, got {self.batch_size}")


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """As in training: no weight decay on biases, norms (1-D) and the positional embedding."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 or "positional" in name else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def retrain(
    model: nn.Module,
    data: Dataset,
    settings: RetrainSettings,
    device: str | torch.device = "cpu",
    batch_transform: Any = None,
    progress: bool = False,
) -> float:
    """Train ``model`` in place for ``settings.epochs`` epochs; returns the mean training loss.

    AdamW (no decay on 1-D parameters), learning rate ``settings.lr`` decaying by a cosine to 0
    per iteration, cross-entropy with ``label_smoothing`` (soft-target cross-entropy when a
    mixup/cutmix ``batch_transform`` is given), AMP on CUDA. Seeded data order.
    """
    import torch
    import torch.nn.functional as F
    from torch.utils.data import DataLoader

    from statmech_nn.readout import progress_bar

    dev = torch.device(device)
    model.to(dev).train()
    gen = torch.Generator().manual_seed(settings.seed)
    torch.manual_seed(settings.seed)
    loader = DataLoader(data, batch_size=settings.batch_size, shuffle=True, generator=gen)
    if settings.epochs == 0 or len(loader) == 0:
        model.eval()
        return math.nan
    optimizer = torch.optim.AdamW(_param_groups(model, settings.weight_decay), lr=settings.lr)
    total = settings.epochs * len(loader)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1.0 + math.cos(math.pi * step / total))
    )
    use_amp = dev.type == "cuda" and settings.amp
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    loss_sum, count = 0.0, 0
    bar = progress_bar(total, "retrain", progress)
    for _ in range(settings.epochs):
        for x, y in loader:
            x, y = x.to(dev), torch.as_tensor(y).to(dev).long()
            target = None
            if batch_transform is not None:
                x, target = batch_transform(x, y)
            with torch.autocast("cuda", dtype=torch.float16, enabled=use_amp):
                logits = model(x)
            if target is not None:
                loss = torch.sum(-target * F.log_softmax(logits.float(), -1), -1).mean()
            else:
                loss = F.cross_entropy(logits.float(), y, label_smoothing=settings.label_smoothing)
            if not torch.isfinite(loss):
                raise StatmechError(
                    f"the retraining loss became non-finite ({loss.item()}); lower --lr"
                )
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            schedule.step()
            loss_sum += float(loss.detach()) * len(y)
            count += len(y)
            bar.update(1)
    bar.close()
    model.eval()
    return loss_sum / max(count, 1)


def evaluate_accuracy(
    model: nn.Module, data: Dataset, device: str | torch.device = "cpu", batch_size: int = 256
) -> float:
    """Top-1 accuracy of ``model`` (eval mode) on ``data``; the training mode is restored."""
    import torch
    from torch.utils.data import DataLoader

    dev = torch.device(device)
    was_training = model.training
    model.to(dev).eval()
    correct = seen = 0
    with torch.no_grad():
        for x, y in DataLoader(data, batch_size=batch_size, shuffle=False):
            y = torch.as_tensor(y).to(dev)
            correct += int((model(x.to(dev)).argmax(-1) == y).sum())
            seen += len(y)
    model.train(was_training)
    return correct / max(seen, 1)
