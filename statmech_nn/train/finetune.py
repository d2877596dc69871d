"""Short fine-tuning of a trained model (e.g. retraining a pruned network), on training's step."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from statmech_nn.errors import TrainingDiverged
from statmech_nn.train.schedule import CosineToZero
from statmech_nn.train.steps import BatchTransform, Step, Totals, make_optimizer, make_scaler


def _stop_if_not_finite(loss: torch.Tensor) -> None:
    if not torch.isfinite(loss):
        raise TrainingDiverged(f"the retraining loss became non-finite ({loss.item()}); lower --lr")


def fine_tune(
    model: nn.Module,
    data: Dataset,
    settings: Any,
    device: str | torch.device = "cpu",
    batch_transform: BatchTransform | None = None,
    progress: bool = False,
) -> float:
    """Train ``model`` in place for ``settings.epochs`` epochs; returns the mean training loss.

    ``settings`` has ``epochs``, ``lr``, ``weight_decay``, ``label_smoothing``, ``batch_size``,
    ``seed`` and ``amp``. AdamW (no decay on 1-D parameters), learning rate ``settings.lr``
    decaying by a cosine to 0 per iteration, cross-entropy with ``label_smoothing`` (soft-target
    cross-entropy when a mixup/cutmix ``batch_transform`` is given), AMP on CUDA, seeded data
    order. The model is left in eval mode; no epochs (or no data) returns NaN.
    """
    from tqdm.auto import tqdm

    dev = torch.device(device)
    model.to(dev).train()
    gen = torch.Generator().manual_seed(settings.seed)
    torch.manual_seed(settings.seed)
    loader = DataLoader(data, batch_size=settings.batch_size, shuffle=True, generator=gen)
    if settings.epochs == 0 or len(loader) == 0:
        model.eval()
        return math.nan
    optimizer = make_optimizer(model, settings.lr, settings.weight_decay)
    total = settings.epochs * len(loader)
    step = Step(
        net=model,
        params=model.parameters,
        optimizer=optimizer,
        schedule=CosineToZero(optimizer, settings.lr, total),
        scaler=make_scaler(dev, settings.amp),
        device=dev,
        amp=settings.amp,
        label_smoothing=settings.label_smoothing,
        batch_transform=batch_transform,
        check=_stop_if_not_finite,
    )
    totals = Totals()
    bar = tqdm(total=total, desc="retrain", unit="batch", disable=not progress, leave=False)
    for _ in range(settings.epochs):
        for x, y in loader:
            loss, logits, labels, _ = step(x, y)
            totals.add(loss, logits, labels)
            bar.update(1)
    bar.close()
    model.eval()
    return totals.loss_sum.item() / max(totals.count, 1)
