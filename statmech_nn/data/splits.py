"""The ``Splits`` bundle that ``load`` returns, the views inside it, and seeded splitting."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence, Sized
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import torch
from torch.utils.data import Dataset

SPLIT_NAMES = ("train", "val", "test")
TRAINING_SEED_OFFSETS = {"train": 0, "val": 1, "test": 2}
"""Seed offsets of training's sample limits: val and test subsets draw with seed+1 and seed+2."""

BatchTransform = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


class TensorSource(Dataset):
    """Raw images held in memory: ``(uint8 image [C, H, W], label)``."""

    def __init__(self, images: torch.Tensor, targets: Sequence[int]) -> None:
        if len(images) != len(targets):
            raise ValueError(f"{len(images)} images but {len(targets)} labels")
        self.images = images
        self.targets = [int(t) for t in targets]

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], self.targets[index]


class View(Dataset):
    """Some samples of a raw source seen through one transform: ``(float32 [C, H, W], label)``.

    ``targets`` lists the labels without decoding any image, for samplers and label subsets.
    """

    def __init__(self, source: Any, indices: Iterable[int], transform: Callable) -> None:
        self.source = source
        self.indices = [int(i) for i in indices]
        self.transform = transform
        labels = source.targets
        self.targets = [int(labels[i]) for i in self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image, _ = self.source[self.indices[index]]
        return self.transform(image), self.targets[index]


def split_sizes(n: int, fraction: float) -> tuple[int, int]:
    """``(kept, held_out)`` sizes when ``round(fraction * n)`` of ``n`` samples are held out."""
    held = int(round(fraction * n))
    return n - held, held


def stratified_split(
    targets: Sequence[int], fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded ``(kept, held_out)`` index arrays, holding out ``round(fraction * n)`` samples.

    Each class contributes in proportion to its size (largest remainders, ties broken at random),
    so small validation sets stay balanced. Both arrays are sorted.
    """
    labels = np.asarray(targets, dtype=np.int64)
    _, n_held = split_sizes(len(labels), fraction)
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    quota = n_held * counts / max(len(labels), 1)
    take = np.floor(quota).astype(np.int64)
    remainder = quota - take
    order = np.lexsort((rng.random(len(classes)), -remainder))
    take[order[: n_held - int(take.sum())]] += 1
    held = [
        rng.permutation(np.flatnonzero(labels == c))[:k] for c, k in zip(classes, take, strict=True)
    ]
    held_idx = np.sort(np.concatenate(held)) if held else np.zeros(0, dtype=np.int64)
    mask = np.ones(len(labels), dtype=bool)
    mask[held_idx] = False
    return np.flatnonzero(mask), held_idx


@dataclass
class Splits:
    """Train / validation / test datasets of one dataset, with everything training needs.

    Each split yields ``(image, label)``: a normalised float32 tensor ``[C, H, W]`` and an int.
    ``val`` always uses the evaluation transforms. ``batch_transform`` (mixup / cutmix for
    ``augment="cct"``) maps a batch ``(images, int labels)`` to ``(images, soft targets)`` whose
    rows sum to 1 and already include the label smoothing; apply ``label_smoothing`` yourself only
    to batches that do not go through it (hard labels). ``meta`` holds dataset-specific facts:
    ``superclass`` (per class) and ``superclass_names`` for synthetic, ``sklearn_index`` (rows of
    ``sklearn.datasets.load_digits()`` per split) for digits. ``info()`` is what training logs.
    """

    name: str
    train: Dataset
    val: Dataset
    test: Dataset
    classes: list[str]
    num_classes: int
    img_size: int
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: str = "none"
    batch_transform: BatchTransform | None = None
    label_smoothing: float = 0.0
    meta: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    val_fraction: float = 0.1
    val_split: str = "carved"
    options: dict[str, Any] = field(default_factory=dict)
    root: str | None = None

    def info(self) -> dict[str, Any]:
        """A JSON-able description of the data a run saw (logged to MLflow by training)."""
        sizes = {name: dataset_size(getattr(self, name)) for name in SPLIT_NAMES}
        return {
            "name": self.name,
            "sizes": sizes,
            "num_classes": self.num_classes,
            "img_size": self.img_size,
            "channels": self.channels,
            "augment": self.augment,
            "label_smoothing": self.label_smoothing,
            "seed": self.seed,
            "val_fraction": self.val_fraction,
            "val_split": self.val_split,
            "mean": list(self.mean),
            "std": list(self.std),
            "options": dict(self.options),
            "root": self.root,
        }

    def limited(
        self,
        seed: int,
        *,
        train: int | None = None,
        val: int | None = None,
        test: int | None = None,
        training_seeds: bool = False,
    ) -> Splits:
        """A copy whose splits are seeded random subsets of at most ``train``/``val``/``test``.

        Every split is cut with :func:`subset`. The analyses (SNP, order, studies) draw every
        split with ``seed``; training and what re-evaluates a training run's samples (pruning)
        pass ``training_seeds=True``: val and test then draw with ``seed + 1`` and ``seed + 2``
        (:data:`TRAINING_SEED_OFFSETS`), so they are not the same positions as the train subset.
        """
        limits = {"train": train, "val": val, "test": test}
        offsets = TRAINING_SEED_OFFSETS if training_seeds else dict.fromkeys(SPLIT_NAMES, 0)
        cut = {
            name: subset(getattr(self, name), limit, seed + offsets[name])
            for name, limit in limits.items()
        }
        return dataclasses.replace(self, train=cut["train"], val=cut["val"], test=cut["test"])


def dataset_size(dataset: Dataset) -> int:
    """``len(dataset)``: our splits are map-style datasets with a length, which torch's
    ``Dataset`` type does not declare."""
    return len(cast(Sized, dataset))


def subset(dataset: Dataset, limit: int | None, seed: int) -> Dataset:
    """A seeded random subset of ``limit`` samples in index order (all of them when None or more).

    Training (``--limit-train`` / ``--limit-eval``), SNP runs and the analyses that rebuild a
    run's data all use this one function, so they see the same samples.
    """
    if limit is None or limit >= len(dataset):  # type: ignore[arg-type]
        return dataset
    if limit < 1:
        from statmech_nn.errors import ConfigError

        raise ConfigError(f"sample limits must be >= 1, got {limit}")
    g = torch.Generator().manual_seed(seed)
    keep = torch.randperm(len(dataset), generator=g)[:limit].sort().values.tolist()  # type: ignore[arg-type]
    return torch.utils.data.Subset(dataset, keep)
