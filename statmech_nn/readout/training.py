"""Phase 2: train a readout per site on the frozen backbone, and measure their accuracy.

Readouts of all requested sites are trained together. One SGD optimiser holds all readouts'
parameters and one backward pass runs on the sum of their losses: the readouts share no
parameter, so each gets exactly its own gradient and update. With an initialisation seeded by
``(seed, site name)``, training a site alone or among others gives the same weights for the same
data order. By default the site activations are computed once and cached
(:mod:`statmech_nn.readout.cached`); ``cache="none"`` keeps the reference loop, one forward pass
of the frozen backbone per batch of every epoch.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from statmech_nn.batches import padding_mask
from statmech_nn.readout.cached import train_on_cache
from statmech_nn.readout.config import ReadoutConfig
from statmech_nn.readout.fit import FitStep, fit_step
from statmech_nn.readout.loading import batch_to, make_loader, progress_bar, resolve_device
from statmech_nn.readout.modules import Readout, make_readout, site_mask
from statmech_nn.sites import ActivationCapture, Site
from statmech_nn.train.steps import label_loss

__all__ = ["deterministic_algorithms", "evaluate", "train_readouts"]


@contextlib.contextmanager
def deterministic_algorithms(enabled: bool, device: torch.device | None = None) -> Iterator[None]:
    """Deterministic kernels inside the block when ``enabled`` (warn where none exists).

    Uses the public ``torch.use_deterministic_algorithms`` and restores the old mode. On CUDA it
    also asks cuBLAS for its deterministic workspace (effective if cuBLAS is not started yet).
    """
    if not enabled:
        yield
        return
    if device is not None and device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    before = torch.are_deterministic_algorithms_enabled()
    warn_before = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before, warn_only=warn_before)


def train_readouts(
    model: nn.Module,
    sites: Sequence[Site],
    data: Dataset | DataLoader,
    num_labels: int,
    config: ReadoutConfig | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> dict[str, Readout]:
    """Train a readout per site on ``data``; returns ``{site.name: readout}`` on ``device``.

    The backbone runs in eval mode without gradients, each pass stopped after the last site it
    needs (its training flag is restored afterwards). ``config.cache`` chooses between one
    cached pass (default) and a pass per batch (``"none"``); the readouts are frozen and in eval
    mode on return.
    """
    config = config or ReadoutConfig()
    dev = resolve_device(device)
    model.to(dev)
    was_training = model.training
    model.eval()
    loader = make_loader(
        data, config.batch_size, shuffle=True, seed=config.seed, num_workers=config.num_workers
    )
    try:
        with deterministic_algorithms(config.deterministic, dev):
            readouts = None
            if config.cache != "none":
                readouts = train_on_cache(model, sites, loader, num_labels, config, dev, progress)
            if readouts is None:
                readouts = _train_uncached(model, sites, loader, num_labels, config, dev, progress)
    finally:
        model.train(was_training)
    for r in readouts.values():
        r.eval()
        r.requires_grad_(False)
    return readouts


def _train_uncached(
    model: nn.Module,
    sites: Sequence[Site],
    loader: DataLoader,
    num_labels: int,
    config: ReadoutConfig,
    dev: torch.device,
    progress: bool,
) -> dict[str, Readout]:
    """The reference loop: one backbone pass per batch of every epoch, fp32, no compile."""
    readouts: dict[str, Readout] = {}
    step: FitStep | None = None
    with ActivationCapture(model, sites) as capture:
        bar = progress_bar(config.epochs * len(loader), "readouts", progress)
        for _epoch in range(config.epochs):
            for batch in loader:
                x, y = batch_to(batch, dev)
                with torch.no_grad():
                    acts = capture(x)
                mask = padding_mask(x)
                if step is None:
                    for site in sites:
                        _, t, n = acts[site.name].shape
                        r = make_readout(config.readout, t, n, num_labels, site, config.seed)
                        readouts[site.name] = r.to(dev)
                    params = [p for r in readouts.values() for p in r.parameters()]
                    step = fit_step(params, config, len(loader))
                loss = sum(
                    label_loss(readouts[s.name](a, site_mask(mask, a)), y)
                    for s in sites
                    for a in (acts[s.name],)
                )
                step(loss)  # type: ignore[arg-type]
                bar.update(1)
        bar.close()
        if not readouts:
            readouts = _untrained(capture, loader, sites, num_labels, config, dev)
    return readouts


def _untrained(
    capture: ActivationCapture,
    loader: DataLoader,
    sites: Sequence[Site],
    num_labels: int,
    config: ReadoutConfig,
    dev: torch.device,
) -> dict[str, Readout]:
    """Freshly initialised readouts (``epochs = 0``), shaped from one batch."""
    x, _ = batch_to(next(iter(loader)), dev)
    with torch.no_grad():
        acts = capture(x)
    out = {}
    for site in sites:
        _, t, n = acts[site.name].shape
        out[site.name] = make_readout(config.readout, t, n, num_labels, site, config.seed).to(dev)
    return out


def evaluate(
    model: nn.Module,
    readouts: Mapping[str, Readout],
    data: Dataset | DataLoader,
    batch_size: int = 128,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> dict[str, float]:
    """Accuracy of every readout on ``data``, one backbone pass per batch."""
    dev = resolve_device(device)
    model.to(dev)
    was_training = model.training
    model.eval()
    sites = [r.site for r in readouts.values()]
    if any(s is None for s in sites):
        raise ValueError("readouts must carry their site (built by train_readouts/make_readout)")
    loader = make_loader(data, batch_size)
    correct = {name: 0 for name in readouts}
    seen = 0
    try:
        with ActivationCapture(model, sites) as capture, torch.no_grad():  # type: ignore[arg-type]
            bar = progress_bar(len(loader), "accuracy", progress)
            for batch in loader:
                x, y = batch_to(batch, dev)
                acts = capture(x)
                mask = padding_mask(x)
                for name, readout in readouts.items():
                    logits = readout(acts[name], site_mask(mask, acts[name]))
                    correct[name] += int((logits.argmax(1) == y).sum())
                seen += len(y)
                bar.update(1)
            bar.close()
    finally:
        model.train(was_training)
    return {name: c / max(seen, 1) for name, c in correct.items()}
