"""Readout fitting, one home: the SGD optimiser, its cosine-per-step schedule and the update.

Every readout path (phase 2 with or without the activation cache, token readouts, the subset
readouts of cooperation and the masked retraining of pruning) builds its optimiser here and
steps it through :class:`FitStep`; the loss is :func:`statmech_nn.train.steps.label_loss` and
the optimiser/scaler update :func:`statmech_nn.train.steps.backward_and_step`, as in training.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch

from statmech_nn.readout.config import ReadoutConfig
from statmech_nn.train.steps import backward_and_step

__all__ = [
    "FitStep",
    "batches_per_epoch",
    "fit_step",
    "readout_sgd",
    "shuffled_rows",
]


def readout_sgd(
    params: Iterable[torch.Tensor],
    lr: float,
    momentum: float,
    nesterov: bool,
    weight_decay: float,
) -> torch.optim.SGD:
    """The readout optimiser: SGD with (Nesterov) momentum and weight decay on every parameter."""
    return torch.optim.SGD(
        params, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay
    )


def cosine_per_step(
    optimizer: torch.optim.Optimizer, total: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """The rate ``lr * (1 + cos(pi * step / total)) / 2``, stepped after every update."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * s / total))
    )


@dataclass
class FitStep:
    """One readout update from a loss: the optimiser/scaler step, ``after_step()`` (without
    gradients, e.g. re-apply a mask), then the schedule."""

    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LRScheduler | None = None
    scaler: torch.amp.GradScaler | None = None
    after_step: Callable[[], object] | None = None

    def __call__(self, loss: torch.Tensor) -> None:
        """Update the parameters from ``loss`` (zero grads, backward, step, schedule)."""
        backward_and_step(loss, self.optimizer, self.scaler)
        if self.after_step is not None:
            with torch.no_grad():
                self.after_step()
        if self.schedule is not None:
            self.schedule.step()


def fit_step(
    params: Iterable[torch.Tensor],
    config: ReadoutConfig,
    steps_per_epoch: int,
    scaler: torch.amp.GradScaler | None = None,
) -> FitStep:
    """The update of ``config``: its SGD, and its cosine schedule over all epochs' steps."""
    optimizer = readout_sgd(
        params, config.lr, config.momentum, config.nesterov, config.weight_decay
    )
    schedule = None
    if config.schedule == "cosine":
        schedule = cosine_per_step(optimizer, max(1, config.epochs * steps_per_epoch))
    return FitStep(optimizer, schedule, scaler)


def batches_per_epoch(samples: int, batch_size: int) -> int:
    """How many batches of ``batch_size`` (the last one short) cover ``samples``."""
    return -(-samples // batch_size)


def shuffled_rows(
    samples: int,
    batch_size: int,
    epochs: int,
    seed: int,
    device: torch.device | str = "cpu",
) -> Iterator[torch.Tensor]:
    """Row indices of every batch of ``epochs`` seeded shuffles of ``samples`` rows, on ``device``.

    One CPU generator seeded with ``seed`` draws each epoch's permutation.
    """
    gen = torch.Generator().manual_seed(int(seed))
    for _ in range(epochs):
        order = torch.randperm(samples, generator=gen).to(device)
        for start in range(0, samples, batch_size):
            yield order[start : start + batch_size]
