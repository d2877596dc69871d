"""The settings of the short retraining under a network mask (network-level ANDC).

The retraining itself is training's own step (:func:`statmech_nn.train.fine_tune`), and the
test accuracy training's evaluation (:func:`statmech_nn.train.accuracy`): one loop, one loss,
one optimiser set-up for training, readouts and pruning.
"""

from __future__ import annotations

from dataclasses import dataclass

from statmech_nn.errors import ConfigError
from statmech_nn.train import accuracy as evaluate_accuracy
from statmech_nn.train import fine_tune as retrain

__all__ = ["RetrainSettings", "evaluate_accuracy", "retrain"]


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
