"""Activation cache for readout training (docs/methods.md section 12).

The backbone is frozen in eval mode and the data are not augmented, so a site's activations are
the same every epoch: one backbone pass fills the cache with what each readout reads
(:meth:`Readout.features`: the activations, the token means for ``mean``, the node-major
flattening for ``flatten``), and all epochs train on it. Sites of equal feature shape are stored
stacked (``[S, samples, *features]``) so that batched readouts gather a step's batch in one
``index_select``. The cache lives in memory (on the training device) or in memory-mapped files,
under a byte budget; sites that do not fit together are cached in groups by depth, each pass
cut after its group's last site. For text the cache also holds the padding mask of every sample
(``mask [samples, T]``): ``mean`` and ``flatten`` features are masked when cached, ``seqpool``
applies it again at every step (its pooling weights change while it trains).
"""

from __future__ import annotations

import logging
import math
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from statmech_nn.batches import head, padding_mask
from statmech_nn.readout.loading import batch_to, progress_bar
from statmech_nn.readout.modules import feature_shape, readout_class, site_mask
from statmech_nn.sites import ActivationCapture, Site

__all__ = [
    "CACHE_TORCH_DTYPES",
    "SiteCache",
    "build_cache",
    "default_budget",
    "format_bytes",
    "plan_groups",
    "probe_shapes",
    "site_bytes",
]

log = logging.getLogger("statmech_nn.readout")

CACHE_TORCH_DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def format_bytes(n: float) -> str:
    """``1.50 GB``-style size (powers of 1000)."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def probe_shapes(
    model: nn.Module, sites: Sequence[Site], loader: DataLoader, device: torch.device
) -> dict[str, tuple[int, int]]:
    """``{name: (tokens, nodes)}`` of every site, in the order the forward pass reaches them."""
    x, _ = batch_to(next(iter(loader)), device)
    with ActivationCapture(model, sites) as capture, torch.no_grad():
        acts = capture(head(x, 2))
    return {name: (int(a.shape[1]), int(a.shape[2])) for name, a in acts.items()}


def site_bytes(kind: str, shape: tuple[int, int], samples: int, dtype: torch.dtype) -> int:
    """Bytes that ``samples`` cached features of a ``(tokens, nodes)`` site take."""
    per_sample = math.prod(feature_shape(kind, *shape))
    return samples * per_sample * torch.empty((), dtype=dtype).element_size()


def _available_memory() -> int:
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def default_budget(where: str, device: torch.device, folder: str | None) -> int:
    """Half of what is free where the cache would live (disk, GPU memory or RAM)."""
    if where == "disk":
        return shutil.disk_usage(folder or ".").free // 2
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0]) // 2
    return _available_memory() // 2


def plan_groups(order: Sequence[str], sizes: dict[str, int], budget: int) -> list[list[str]] | None:
    """Consecutive groups of ``order`` (by depth) whose bytes fit ``budget``, fewest first-fit.

    ``None`` when a single site alone exceeds the budget (it cannot be cached).
    """
    if any(sizes[name] > budget for name in order):
        return None
    groups: list[list[str]] = []
    used = budget + 1
    for name in order:
        if used + sizes[name] > budget:
            groups.append([])
            used = 0
        groups[-1].append(name)
        used += sizes[name]
    return groups


@dataclass
class SiteCache:
    """Cached features of a group of sites: equal-shape sites stacked ``[S, samples, *f]``.

    ``stacks`` maps a tuple of site names to its stacked tensor; ``labels [samples]`` are long;
    ``mask [samples, T]`` is the inputs' boolean padding mask (text) or ``None`` (images).
    """

    kind: str
    stacks: dict[tuple[str, ...], torch.Tensor]
    labels: torch.Tensor
    mask: torch.Tensor | None = None

    def mask_for(self, tokens: int) -> torch.Tensor | None:
        """The mask a ``seqpool`` site of ``tokens`` positions reads with (``None``: unmasked)."""
        if self.mask is None or self.kind != "seqpool" or tokens == 1:
            return None
        return self.mask

    @property
    def device(self) -> torch.device:
        return self.labels.device

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.stacks.values())

    def site(self, name: str) -> torch.Tensor:
        """The ``[samples, *features]`` view of one site."""
        for names, stack in self.stacks.items():
            if name in names:
                return stack[names.index(name)]
        raise KeyError(name)


def _allocate(
    shape: tuple[int, ...], dtype: torch.dtype, device: torch.device, folder: Path | None, tag: str
) -> torch.Tensor:
    if folder is None:
        return torch.empty(shape, dtype=dtype, device=device)
    path = folder / f"{tag}.bin"
    return torch.from_file(str(path), shared=True, size=math.prod(shape), dtype=dtype).view(shape)


def build_cache(
    model: nn.Module,
    sites: Sequence[Site],
    kind: str,
    shapes: dict[str, tuple[int, int]],
    loader: DataLoader,
    samples: int,
    dtype: torch.dtype,
    device: torch.device,
    folder: Path | None = None,
    progress: bool = True,
) -> SiteCache:
    """Run ``model`` once over ``loader`` (index order) and cache ``sites``' features.

    The tensors live on ``device``, or in memory-mapped files under ``folder`` when given (on the
    CPU). The forward pass stops after the last of ``sites`` it reaches.
    """
    where = torch.device("cpu") if folder is not None else device
    by_shape: dict[tuple[int, ...], list[str]] = {}
    for site in sites:
        by_shape.setdefault(feature_shape(kind, *shapes[site.name]), []).append(site.name)
    stacks = {
        tuple(names): _allocate((len(names), samples, *shape), dtype, where, folder, f"stack{i}")
        for i, (shape, names) in enumerate(by_shape.items())
    }
    labels = torch.empty(samples, dtype=torch.long, device=where)
    mask: torch.Tensor | None = None
    features = readout_class(kind).features
    start = 0
    with ActivationCapture(model, sites) as capture, torch.no_grad():
        bar = progress_bar(len(loader), f"caching {len(sites)} sites", progress)
        for batch in loader:
            x, y = batch_to(batch, device)
            acts = capture(x)
            real = padding_mask(x)
            stop = start + len(y)
            if stop > samples:
                raise RuntimeError(f"the loader gave more than its dataset's {samples} samples")
            for names, stack in stacks.items():
                for i, name in enumerate(names):
                    a = acts[name]
                    stack[i, start:stop].copy_(features(a, site_mask(real, a)))
            if real is not None:
                if mask is None:
                    mask = torch.zeros((samples, real.shape[1]), dtype=torch.bool, device=where)
                mask[start:stop].copy_(real)
            labels[start:stop].copy_(y)
            start = stop
            bar.update(1)
        bar.close()
    if start != samples:
        raise RuntimeError(f"the loader gave {start} samples, its dataset has {samples}")
    return SiteCache(kind, stacks, labels, mask)
