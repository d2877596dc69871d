"""Loaders, devices and progress bars shared by readout training and evaluation."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from statmech_nn.batches import split_batch

__all__ = [
    "batch_to",
    "index_loader",
    "is_indexable",
    "make_loader",
    "progress_bar",
    "resolve_device",
    "sequential_loader",
]


def progress_bar(total: int, desc: str, enabled: bool, unit: str = "batch"):
    """A tqdm bar over batches (``TQDM_DISABLE=1`` or ``enabled=False`` hides it)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled, leave=False)


def make_loader(
    data: Dataset | DataLoader,
    batch_size: int,
    shuffle: bool = False,
    seed: int = 0,
    num_workers: int = 0,
) -> DataLoader:
    """A loader over ``data`` (passed through when already a DataLoader); seeded shuffling."""
    if isinstance(data, DataLoader):
        return data
    gen = torch.Generator().manual_seed(int(seed)) if shuffle else None
    return DataLoader(
        data, batch_size=batch_size, shuffle=shuffle, generator=gen, num_workers=num_workers
    )


def is_indexable(loader: DataLoader) -> bool:
    """Whether ``loader`` draws index batches from a sized map-style dataset (cacheable)."""
    dataset = loader.dataset
    return (
        not isinstance(dataset, IterableDataset)
        and hasattr(dataset, "__len__")
        and loader.batch_sampler is not None
    )


def sequential_loader(loader: DataLoader, batch_size: int) -> DataLoader:
    """``loader``'s dataset in index order, with its collate function and workers.

    It has a generator of its own, so iterating it leaves the global random state alone.
    """
    return DataLoader(
        loader.dataset,
        batch_size=batch_size,
        shuffle=False,
        collate_fn=loader.collate_fn,
        num_workers=loader.num_workers,
        generator=torch.Generator(),
    )


def index_loader(loader: DataLoader) -> DataLoader:
    """The index batches ``loader`` would draw, in its order, without loading any sample.

    It shares ``loader``'s batch sampler and generator, so iterating it consumes the random
    state exactly as iterating ``loader`` would (one epoch's order per iteration).
    """
    return DataLoader(
        range(len(loader.dataset)),  # type: ignore[arg-type]
        batch_sampler=loader.batch_sampler,
        generator=loader.generator,
    )


def batch_to(batch: object, device: torch.device) -> tuple[Any, torch.Tensor]:
    """``(inputs, long labels)`` of a loader batch, on ``device`` (inputs: a tensor or a dict)."""
    return split_batch(batch, device)


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``device`` or CUDA when available, else CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)
