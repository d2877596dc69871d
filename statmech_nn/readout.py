"""Phase 2: linear readouts from frozen site activations to the labels (METHODS.md section 3).

Every readout ends in ``Linear(nodes, labels, bias=False)`` so that a node's field is exactly its
share of the logits. Readouts of all requested sites are trained together: one forward pass of the
frozen backbone (eval mode, no grad) per batch feeds every site's readout. One SGD optimiser holds
all readouts' parameters and one backward pass runs on the sum of their losses: the readouts share
no parameter, so each gets exactly its own gradient and update. With an initialisation seeded by
``(seed, site name)``, training a site alone or among others gives the same weights for the same
data order.
"""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset

from statmech_nn.errors import UnknownNameError
from statmech_nn.sites import ActivationCapture, Site

__all__ = [
    "READOUTS",
    "FlattenReadout",
    "MeanReadout",
    "Readout",
    "ReadoutConfig",
    "SeqPoolReadout",
    "evaluate",
    "make_loader",
    "make_readout",
    "progress_bar",
    "train_readouts",
]

READOUTS = ("seqpool", "flatten", "mean")


class Readout(nn.Module):
    """Base class: ``forward(a [B, T, N]) -> logits [B, labels]``; ``site`` names where it reads."""

    kind: str = ""

    def __init__(self, tokens: int, nodes: int, labels: int, site: Site | None = None):
        super().__init__()
        self.tokens, self.nodes, self.labels = tokens, nodes, labels
        self.site = site

    def check(self, a: torch.Tensor) -> None:
        """Raise if ``a`` does not have the shape this readout was built for."""
        if (
            a.ndim != 3
            or a.shape[2] != self.nodes
            or (self.kind == "flatten" and a.shape[1] != self.tokens)
        ):
            raise ValueError(
                f"{self.kind} readout built for [B, {self.tokens}, {self.nodes}] got "
                f"{list(a.shape)}"
            )


class SeqPoolReadout(Readout):
    """``z = sum_t softmax_t(a[b,t,:] . g + g0) a[b,t,:]``, logits ``W z``; ``pool`` holds g, g0."""

    kind = "seqpool"

    def __init__(self, tokens: int, nodes: int, labels: int, site: Site | None = None):
        super().__init__(tokens, nodes, labels, site)
        self.pool = nn.Linear(nodes, 1)
        self.fc = nn.Linear(nodes, labels, bias=False)

    def weights(self, a: torch.Tensor) -> torch.Tensor:
        """Pooling weights ``[B, T]``."""
        return torch.softmax(self.pool(a).squeeze(-1), dim=1)

    def pooled(self, a: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bt,btn->bn", self.weights(a), a)

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pooled(a))


class MeanReadout(Readout):
    """Token mean, then ``W``."""

    kind = "mean"

    def __init__(self, tokens: int, nodes: int, labels: int, site: Site | None = None):
        super().__init__(tokens, nodes, labels, site)
        self.fc = nn.Linear(nodes, labels, bias=False)

    def pooled(self, a: torch.Tensor) -> torch.Tensor:
        return a.mean(dim=1)

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pooled(a))


class FlattenReadout(Readout):
    """``Linear(tokens * nodes, labels)`` on ``a`` flattened node-major (index ``n * T + t``).

    :meth:`weight_jnt` gives the weights as ``W[j, n, t]``, the order of METHODS.md section 4 (and
    of the authors' CNN readout, which flattens ``[C, H, W]`` maps).
    """

    kind = "flatten"

    def __init__(self, tokens: int, nodes: int, labels: int, site: Site | None = None):
        super().__init__(tokens, nodes, labels, site)
        self.fc = nn.Linear(tokens * nodes, labels, bias=False)

    def weight_jnt(self) -> torch.Tensor:
        return self.fc.weight.view(self.labels, self.nodes, self.tokens)

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        return self.fc(a.transpose(1, 2).flatten(1))


_CLASSES = {"seqpool": SeqPoolReadout, "flatten": FlattenReadout, "mean": MeanReadout}


def site_seed(seed: int, name: str) -> int:
    """A seed that depends only on the run seed and the site's name."""
    return (int(seed) * 1_000_003 + zlib.crc32(name.encode())) % (2**63 - 1)


def make_readout(
    kind: str, tokens: int, nodes: int, labels: int, site: Site | None = None, seed: int = 0
) -> Readout:
    """A fresh readout: ``W ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in))``, pooling ``g = 0, g0 = 0``.

    Zero pooling weights start ``seqpool`` as the token mean. Seeded by ``(seed, site.name)``.
    """
    if kind not in _CLASSES:
        raise UnknownNameError(f"unknown readout {kind!r}: choose one of {', '.join(READOUTS)}")
    readout = _CLASSES[kind](tokens, nodes, labels, site)
    gen = torch.Generator().manual_seed(site_seed(seed, site.name if site else kind))
    with torch.no_grad():
        fc = readout.fc.weight
        bound = 1.0 / math.sqrt(fc.shape[1])
        fc.copy_(torch.rand(fc.shape, generator=gen) * 2 * bound - bound)
        if isinstance(readout, SeqPoolReadout):
            readout.pool.weight.zero_()
            readout.pool.bias.zero_()
    return readout


@dataclass
class ReadoutConfig:
    """Readout training choices (METHODS.md section 3 defaults)."""

    readout: str = "seqpool"
    epochs: int = 10
    lr: float = 0.01
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 1e-3
    batch_size: int = 128
    schedule: str = "cosine"
    seed: int = 0
    num_workers: int = 0

    def __post_init__(self) -> None:
        if self.readout not in READOUTS:
            raise UnknownNameError(
                f"unknown readout {self.readout!r}: choose one of {', '.join(READOUTS)}"
            )
        if self.schedule not in ("cosine", "constant"):
            raise UnknownNameError(
                f"unknown schedule {self.schedule!r}: choose 'cosine' or 'constant'"
            )
        if self.epochs < 0 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError("readout epochs must be >= 0, batch size >= 1 and lr > 0")

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


def progress_bar(total: int, desc: str, enabled: bool):
    """A tqdm bar over batches (``TQDM_DISABLE=1`` or ``enabled=False`` hides it)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="batch", disable=not enabled, leave=False)


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


def _batch(batch: object, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = batch[0], batch[1]  # type: ignore[index]
    y = torch.as_tensor(y)
    return x.to(device, non_blocking=True), y.to(device, non_blocking=True).long()


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``device`` or CUDA when available, else CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def train_readouts(
    model: nn.Module,
    sites: Sequence[Site],
    data: Dataset | DataLoader,
    num_labels: int,
    config: ReadoutConfig | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> dict[str, Readout]:
    """Train a readout per site on ``data`` in one pass of the frozen ``model`` per batch.

    The backbone runs in eval mode without gradients and stops after the last site (its
    training flag is restored afterwards). Returns ``{site.name: readout}`` on ``device``.
    """
    config = config or ReadoutConfig()
    dev = resolve_device(device)
    model.to(dev)
    was_training = model.training
    model.eval()
    loader = make_loader(
        data, config.batch_size, shuffle=True, seed=config.seed, num_workers=config.num_workers
    )
    readouts: dict[str, Readout] = {}
    optimiser: torch.optim.Optimizer | None = None
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
    total = max(1, config.epochs * len(loader))
    try:
        with ActivationCapture(model, sites) as capture:
            bar = progress_bar(config.epochs * len(loader), "readouts", progress)
            for _epoch in range(config.epochs):
                for batch in loader:
                    x, y = _batch(batch, dev)
                    with torch.no_grad():
                        acts = capture(x)
                    if optimiser is None:
                        for site in sites:
                            _, t, n = acts[site.name].shape
                            r = make_readout(config.readout, t, n, num_labels, site, config.seed)
                            readouts[site.name] = r.to(dev)
                        optimiser = torch.optim.SGD(
                            [p for r in readouts.values() for p in r.parameters()],
                            lr=config.lr,
                            momentum=config.momentum,
                            nesterov=config.nesterov,
                            weight_decay=config.weight_decay,
                        )
                        if config.schedule == "cosine":
                            scheduler = torch.optim.lr_scheduler.LambdaLR(
                                optimiser, lambda s: 0.5 * (1 + math.cos(math.pi * s / total))
                            )
                    loss = sum(
                        F.cross_entropy(readouts[site.name](acts[site.name]), y) for site in sites
                    )
                    optimiser.zero_grad(set_to_none=True)
                    loss.backward()  # type: ignore[union-attr]
                    optimiser.step()
                    if scheduler is not None:
                        scheduler.step()
                    bar.update(1)
            bar.close()
            if not readouts:
                readouts = _untrained(capture, loader, sites, num_labels, config, dev)
    finally:
        model.train(was_training)
    for r in readouts.values():
        r.eval()
        r.requires_grad_(False)
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
    x, _ = _batch(next(iter(loader)), dev)
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
                x, y = _batch(batch, dev)
                acts = capture(x)
                for name, readout in readouts.items():
                    correct[name] += int((readout(acts[name]).argmax(1) == y).sum())
                seen += len(y)
                bar.update(1)
            bar.close()
    finally:
        model.train(was_training)
    return {name: c / max(seen, 1) for name, c in correct.items()}
