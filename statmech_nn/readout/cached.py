"""Readout training on an activation cache: one backbone pass (per group of sites), E epochs.

Each group of sites is trained in the data order of the uncached loop (its loader's random
state is restored before every group and an index loader shares the loader's sampler), with
the same initialisation, optimiser and schedule: with an ``fp32`` cache the readouts equal
those of the uncached loop within float tolerance. On CUDA the step runs under autocast
(``bf16`` without loss scaling, ``fp16`` with a GradScaler) with TF32 matmuls, and equal-shape
readouts are trained as one :class:`BatchedReadout` (``config.batched``).
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from statmech_nn.readout.batched import BatchedReadout, equal_shape_groups
from statmech_nn.readout.cache import (
    CACHE_TORCH_DTYPES,
    SiteCache,
    build_cache,
    default_budget,
    format_bytes,
    plan_groups,
    probe_shapes,
    site_bytes,
)
from statmech_nn.readout.config import ReadoutConfig
from statmech_nn.readout.fit import fit_step
from statmech_nn.readout.loading import index_loader, is_indexable, progress_bar, sequential_loader
from statmech_nn.readout.modules import Readout, make_readout
from statmech_nn.sites import Site
from statmech_nn.train.steps import label_loss, make_scaler

__all__ = ["train_on_cache"]

log = logging.getLogger("statmech_nn.readout")


class _RandomState:
    """The random state a loader's shuffling draws from, saved so every group sees one order."""

    def __init__(self, loader: DataLoader) -> None:
        gens = [loader.generator, getattr(loader.sampler, "generator", None)]
        self._gens = [g for i, g in enumerate(gens) if g is not None and g not in gens[:i]]
        self._states = [g.get_state() for g in self._gens]
        self._global = torch.get_rng_state()

    def restore(self) -> None:
        for gen, state in zip(self._gens, self._states, strict=True):
            gen.set_state(state)
        torch.set_rng_state(self._global)


@contextlib.contextmanager
def _tf32(device: torch.device) -> Iterator[None]:
    """TF32 matmuls and convolutions on CUDA (the old flags restored)."""
    if device.type != "cuda":
        yield
        return
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def _autocast(device: torch.device, config: ReadoutConfig):
    if device.type == "cuda" and config.autocast != "none":
        dtype = torch.bfloat16 if config.autocast == "bf16" else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return contextlib.nullcontext()


class _Unit:
    """What one step trains: a single readout or a batched group, where its features are, and
    the padding mask its pooling reads with (``None`` for images and for masked-when-cached
    features)."""

    def __init__(
        self,
        module: nn.Module,
        features: torch.Tensor,
        batched: bool,
        mask: torch.Tensor | None = None,
    ) -> None:
        self.module, self.features, self.batched, self.mask = module, features, batched, mask

    def gather(self, idx: torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        f = self.features.index_select(1 if self.batched else 0, idx)
        return f.to(device, dtype, non_blocking=True)

    def gather_mask(self, idx: torch.Tensor, device: torch.device) -> torch.Tensor | None:
        if self.mask is None:
            return None
        return self.mask.index_select(0, idx).to(device, non_blocking=True)

    def loss(self, f: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        if self.batched:
            return self.module.loss(f, y, mask)  # type: ignore[operator]
        return label_loss(self.module.forward_features(f, mask), y)  # type: ignore[operator]


def _units(
    cache: SiteCache, readouts: dict[str, Readout], batched: bool
) -> tuple[list[_Unit], list[tuple[BatchedReadout, list[Readout]]]]:
    units: list[_Unit] = []
    groups: list[tuple[BatchedReadout, list[Readout]]] = []
    for names, stack in cache.stacks.items():
        members = [readouts[n] for n in names]
        if not batched:
            units.extend(
                _Unit(r, stack[i], False, cache.mask_for(r.tokens)) for i, r in enumerate(members)
            )
            continue
        for positions in equal_shape_groups(members):
            chosen = [members[i] for i in positions]
            module = BatchedReadout(chosen).to(chosen[0].fc.weight.device)
            sub = stack if len(positions) == len(names) else stack[positions]
            units.append(_Unit(module, sub, True, cache.mask_for(chosen[0].tokens)))
            groups.append((module, chosen))
    return units, groups


def _step_loss(units: list[_Unit], compile: bool) -> Callable[..., torch.Tensor]:
    def total(
        features: list[torch.Tensor], y: torch.Tensor, masks: list[torch.Tensor | None]
    ) -> torch.Tensor:
        return sum(  # type: ignore[return-value]
            u.loss(f, y, m) for u, f, m in zip(units, features, masks, strict=True)
        )

    return torch.compile(total) if compile else total


def _fresh(
    sites: Sequence[Site],
    shapes: dict[str, tuple[int, int]],
    num_labels: int,
    config: ReadoutConfig,
    device: torch.device,
) -> dict[str, Readout]:
    """Freshly initialised readouts of ``sites`` (seeded by site name), on ``device``."""
    out = {}
    for s in sites:
        tokens, nodes = shapes[s.name]
        out[s.name] = make_readout(config.readout, tokens, nodes, num_labels, s, config.seed)
    return {name: r.to(device) for name, r in out.items()}


def _fit_group(
    sites: Sequence[Site],
    cache: SiteCache,
    shapes: dict[str, tuple[int, int]],
    loader: DataLoader,
    num_labels: int,
    config: ReadoutConfig,
    device: torch.device,
    batched: bool,
    progress: bool,
) -> dict[str, Readout]:
    """Train the readouts of ``sites`` for ``config.epochs`` on ``cache``."""
    readouts = _fresh(sites, shapes, num_labels, config, device)
    units, groups = _units(cache, readouts, batched)
    params = [p for u in units for p in u.module.parameters()]
    order = index_loader(loader)
    scaler = make_scaler(device, config.autocast == "fp16")
    step = fit_step(params, config, len(order), scaler)
    on_cuda_amp = device.type == "cuda" and config.autocast != "none"
    dtype = cache.stacks[next(iter(cache.stacks))].dtype if on_cuda_amp else torch.float32
    step_loss = _step_loss(units, config.compile)
    bar = progress_bar(config.epochs * len(order), f"readouts ({len(sites)} sites)", progress)
    for _epoch in range(config.epochs):
        for idx in order:
            idx = idx.to(cache.device, non_blocking=True)
            y = cache.labels.index_select(0, idx).to(device, non_blocking=True)
            features = [u.gather(idx, device, dtype) for u in units]
            masks = [u.gather_mask(idx, device) for u in units]
            with _autocast(device, config):
                loss = step_loss(features, y, masks)
            step(loss)
            bar.update(1)
    bar.close()
    for module, members in groups:
        module.write_back(members)
    return readouts


@dataclass
class _Plan:
    """How every group is cached: site shapes, the index-order loader, dtype, place, batching."""

    shapes: dict[str, tuple[int, int]]
    sequential: DataLoader
    samples: int
    dtype: torch.dtype
    folder: Path | None
    batched: bool


def _cache_and_fit(
    model: nn.Module,
    group: Sequence[Site],
    plan: _Plan,
    loader: DataLoader,
    num_labels: int,
    config: ReadoutConfig,
    device: torch.device,
    progress: bool,
) -> dict[str, Readout]:
    """Cache one group's features in one backbone pass, then train its readouts on them."""
    start = time.perf_counter()
    cache = build_cache(
        model, group, config.readout, plan.shapes, plan.sequential, plan.samples, plan.dtype,
        device, plan.folder, progress,
    )  # fmt: skip
    filled = time.perf_counter()
    log.info(
        "readout cache: %s features (%s) of %d sites x %d samples, %s on %s, filled in %.2f s",
        config.readout, config.cache_dtype, len(group), plan.samples, format_bytes(cache.nbytes),
        f"files in {plan.folder}" if plan.folder else cache.device, filled - start,
    )  # fmt: skip
    readouts = _fit_group(
        group, cache, plan.shapes, loader, num_labels, config, device, plan.batched, progress
    )
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    log.info(
        "readout cache: %d epochs of %d readouts trained on it in %.2f s%s",
        config.epochs, len(group), time.perf_counter() - filled,
        " (batched)" if plan.batched else "",
    )  # fmt: skip
    return readouts


def train_on_cache(
    model: nn.Module,
    sites: Sequence[Site],
    loader: DataLoader,
    num_labels: int,
    config: ReadoutConfig,
    device: torch.device,
    progress: bool = True,
) -> dict[str, Readout] | None:
    """Readouts of ``sites`` trained on cached activations; ``None`` when they cannot be cached.

    ``model`` must already be on ``device`` and in eval mode.
    """
    if not is_indexable(loader):
        log.warning("readout cache off: the data are not a sized map-style dataset")
        return None
    state = _RandomState(loader)
    samples = len(loader.dataset)  # type: ignore[arg-type]
    sequential = sequential_loader(loader, config.batch_size)
    shapes = probe_shapes(model, sites, sequential, device)
    if config.epochs == 0:
        return _fresh(sites, shapes, num_labels, config, device)
    dtype = CACHE_TORCH_DTYPES[config.cache_dtype]
    sizes = {
        name: site_bytes(config.readout, shape, samples, dtype) for name, shape in shapes.items()
    }
    cache_dir = config.cache_dir or tempfile.gettempdir()
    budget = int(config.cache_budget or default_budget(config.cache, device, cache_dir))
    groups = plan_groups(list(shapes), sizes, budget)
    if groups is None:
        name = max(sizes, key=sizes.__getitem__)
        log.warning(
            "readout cache off: site %s alone needs %s, over the cache budget of %s; "
            "the backbone reruns every batch",
            name,
            format_bytes(sizes[name]),
            format_bytes(budget),
        )
        return None
    if len(groups) > 1:
        log.warning(
            "readout cache: %d sites need %s, over the budget of %s: caching them in %d groups "
            "by depth (%s), one backbone pass per group",
            len(shapes),
            format_bytes(sum(sizes.values())),
            format_bytes(budget),
            len(groups),
            " | ".join(f"{g[0]}..{g[-1]}" for g in groups),
        )
    batched = device.type == "cuda" if config.batched is None else bool(config.batched)
    by_name = {s.name: s for s in sites}
    trained: dict[str, Readout] = {}
    with contextlib.ExitStack() as stack, _tf32(device):
        folder = None
        if config.cache == "disk":
            Path(cache_dir).mkdir(parents=True, exist_ok=True)
            tmp = tempfile.TemporaryDirectory(prefix="readout-cache-", dir=cache_dir)
            folder = Path(stack.enter_context(tmp))
        for group_names in groups:
            state.restore()
            group = [by_name[n] for n in group_names]
            plan = _Plan(shapes, sequential, samples, dtype, folder, batched)
            trained.update(
                _cache_and_fit(model, group, plan, loader, num_labels, config, device, progress)
            )
    return {s.name: trained[s.name] for s in sites}
