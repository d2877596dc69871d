"""The training configuration: every setting of a run, checked when it is made.

Every value a user can get wrong raises :class:`~statmech_nn.errors.ConfigError` with one line
saying what was wrong and what to pass instead, before any data is read or any run created.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from statmech_nn.data.mlm import MLM_OBJECTIVE
from statmech_nn.errors import ConfigError

SCHEDULE_UNITS = ("iteration", "epoch")
OBJECTIVES = ("classification", MLM_OBJECTIVE)
"""What a run trains for: labels of whole samples, or masked tokens (BERT's MLM pre-training)."""
RUNTIME_FIELDS = ("device", "workers")
"""Fields a resumed run takes from the caller; every other one comes from the run itself."""


@dataclass
class TrainConfig:
    """Everything that defines a training run; logged as MLflow params and stored in checkpoints.

    ``img_size`` and ``num_classes`` left at ``None`` are filled from the dataset.
    ``label_smoothing=None`` takes the augmentation preset's value. ``limit_train`` /
    ``limit_eval`` keep a seeded random subset of that many samples (smoke tests, quick looks).
    ``schedule_per`` sets whether the learning rate moves every iteration (fractional epochs) or
    once per epoch (as timm does). ``keep_resume``: checkpoints that keep the full resume state
    (the newest N); older ones keep the weights alone. ``objective="mlm"`` pre-trains a
    Hugging Face BERT-style encoder (``hf:`` models) as a masked language model on a text set,
    masking ``mlm_probability`` of the positions (:mod:`statmech_nn.data.mlm`); its accuracies
    are then masked-token accuracies.
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
    keep_resume: int = 2
    limit_train: int | None = None
    limit_eval: int | None = None
    recipe: str | None = None
    objective: str = "classification"
    mlm_probability: float = 0.15

    def __post_init__(self) -> None:
        check_config(self)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able copy."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrainConfig:
        """Build from a dict (unknown keys, e.g. ``model_config`` of a checkpoint, ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _whole(config: TrainConfig, name: str, minimum: int, optional: bool = False) -> None:
    """``config.name`` is a whole number >= ``minimum`` (or ``None`` when ``optional``)."""
    value = getattr(config, name)
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ConfigError(
            f"{name} must be a whole number >= {minimum}, got {value!r}; "
            f"pass {_flag(name)} {minimum} or more"
        )


def _real(
    config: TrainConfig,
    name: str,
    low: float,
    high: float | None = None,
    low_open: bool = False,
    optional: bool = False,
) -> None:
    """``config.name`` is a finite number in ``[low, high)`` (``(low, high)`` if ``low_open``)."""
    value = getattr(config, name)
    if optional and value is None:
        return
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if low_open else value >= low) and (high is None or value < high)
    if not ok:
        where = f"{'(' if low_open else '['}{low:g}, {high:g})" if high is not None else None
        wanted = where and f"in {where}" or (f"> {low:g}" if low_open else f">= {low:g}")
        raise ConfigError(
            f"{name} must be a finite number {wanted}, got {value!r}; pass {_flag(name)} {wanted}"
        )


def _check_choice(config: TrainConfig, name: str, choices: tuple[str, ...]) -> None:
    value = getattr(config, name)
    if value not in choices:
        raise ConfigError(
            f"{name} must be one of {', '.join(choices)}, got {value!r}; pass {_flag(name)} "
            f"{choices[0]}"
        )


def _check_flag(config: TrainConfig, name: str) -> None:
    if not isinstance(getattr(config, name), bool):
        raise ConfigError(f"{name} must be true or false, got {getattr(config, name)!r}")


def check_device_name(name: Any) -> None:
    """``auto`` or a torch device name (``cpu``, ``cuda``, ``cuda:1``), else ConfigError."""
    if name == "auto":
        return
    try:
        torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(
            f"device {name!r} is not a device torch knows; pass --device auto, cpu or cuda"
        ) from None


def check_config(config: TrainConfig) -> None:
    """Raise :class:`ConfigError` (one line) for the first value of ``config`` that cannot work."""
    for name in ("epochs", "batch_size", "checkpoint_every", "keep_resume"):
        _whole(config, name, 1)
    _whole(config, "workers", 0)
    _whole(config, "seed", 0)
    for name in ("limit_train", "limit_eval", "img_size", "num_classes"):
        _whole(config, name, 1, optional=True)
    _real(config, "lr", 0.0, low_open=True)
    for name in ("weight_decay", "warmup_epochs", "warmup_lr", "min_lr", "cooldown_epochs"):
        _real(config, name, 0.0)
    _real(config, "grad_clip", 0.0, optional=True)  # 0 turns clipping off
    _real(config, "val_fraction", 0.0, 1.0)
    for name in ("label_smoothing", "attention_dropout", "stochastic_depth"):
        _real(config, name, 0.0, 1.0, optional=True)
    _real(config, "mlm_probability", 0.0, 1.0, low_open=True)
    _check_choice(config, "schedule_per", SCHEDULE_UNITS)
    _check_choice(config, "objective", OBJECTIVES)
    for name in ("amp", "bf16", "download"):
        _check_flag(config, name)
    check_device_name(config.device)
