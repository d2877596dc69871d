"""Learning-rate schedules: training's warm-up + cosine, and fine-tuning's cosine to zero."""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from statmech_nn.train.config import TrainConfig


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


class _StepSchedule:
    """A learning rate per optimiser step: :meth:`apply` sets it, :meth:`step` counts the step."""

    optimizer: torch.optim.Optimizer
    step_count: int

    def current(self) -> float:
        """The learning rate of the coming step."""
        raise NotImplementedError

    def apply(self) -> float:
        """Give the optimiser the coming step's learning rate; returns it."""
        lr = self.current()
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def step(self) -> None:
        """Count one optimiser step."""
        self.step_count += 1


class Schedule(_StepSchedule):
    """Sets the optimiser's learning rate from :func:`lr_at`; its state is the step count."""

    def __init__(self, config: TrainConfig, optimizer: torch.optim.Optimizer, steps: int) -> None:
        self.config = config
        self.optimizer = optimizer
        self.steps_per_epoch = max(steps, 1)
        self.step_count = 0

    def current(self) -> float:
        """The learning rate of the coming step."""
        epoch, i = divmod(self.step_count, self.steps_per_epoch)
        t = epoch + (i / self.steps_per_epoch if self.config.schedule_per == "iteration" else 0)
        return lr_at(self.config, t)

    def state_dict(self) -> dict[str, int]:
        """The checkpointed state: steps taken and steps per epoch."""
        return {"step": self.step_count, "steps_per_epoch": self.steps_per_epoch}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        """Continue from a checkpointed step count."""
        self.step_count = int(state["step"])


class CosineToZero(_StepSchedule):
    """``lr (1 + cos(pi k / total)) / 2`` at step ``k``: fine-tuning's per-iteration decay to 0."""

    def __init__(self, optimizer: torch.optim.Optimizer, lr: float, total: int) -> None:
        self.optimizer = optimizer
        self.lr = lr
        self.total = max(total, 1)
        self.step_count = 0

    def current(self) -> float:
        """The learning rate of the coming step."""
        return self.lr * (0.5 * (1.0 + math.cos(math.pi * self.step_count / self.total)))
