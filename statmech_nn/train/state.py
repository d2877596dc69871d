"""What one training process holds between epochs."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from statmech_nn.train.config import TrainConfig
from statmech_nn.train.dist import (
    Dist,
)
from statmech_nn.train.schedule import Schedule

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
