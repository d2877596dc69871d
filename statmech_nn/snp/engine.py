"""Phase 3: single-node (SNP) matrices for every node of every site, as an xarray Dataset.

methods sections 4 and 9. For node ``n`` of a site, ``M_n[i, j]`` is the mean over test samples
of true label ``i`` of the field ``f_n(b, j)`` that node ``n`` alone sends to output ``j``. Every
field is linear in a per-node quantity, so all matrices follow from class-wise sums accumulated in
one streaming pass, with no per-node forward pass:

- ``mean``: ``f_n(b, j) = W[j, n] mean_t a[b,t,n]``; class sums of the token means.
- ``flatten``: ``f_n(b, j) = sum_t W[j,n,t] a[b,t,n]``; class sums ``A[i,t,n]`` of the activations,
  contracted with ``W`` at the end.
- ``seqpool`` / ``post_pool``: ``f_n(b, j) = W[j, n] z_n(b)`` with the pooled features ``z`` of
  the full readout; class sums of ``z``.
- ``seqpool`` / ``pre_pool``: the pooling sees node ``n`` alone,
  ``w[b,t,n] = softmax_t(a[b,t,n] g[n] + g0)`` for all nodes at once (elementwise), and
  ``f_n(b, j) = W[j, n] sum_t w[b,t,n] a[b,t,n]``; class sums of the node-pooled features.

**Single-head matrices** (sites with ``heads``, [SHP] route): all nodes outside head ``h`` are
silenced at the readout input, the readout is rerun, and ``M_h[i, j]`` is the class mean of the
logits. For ``mean``, ``flatten`` and ``post_pool`` this is the sum of the head's node fields
(``M_h = sum_{n in h} M_n`` before normalisation). For ``pre_pool`` the head's nodes pool
together: ``w_h[b,t] = softmax_t(sum_{n in h} a[b,t,n] g[n] + g0)`` and
``f_h(b, j) = sum_{n in h} W[j, n] sum_t w_h[b,t] a[b,t,n]``.

**Text** (docs/methods.md section 10): with the batch's padding mask, every token sum and softmax
above runs over the real positions only (``mean`` divides by their count, the pooling weights are
0 at padding) and ``flatten`` reads zeros at padding, through :mod:`statmech_nn.text_masks`.

Normalisation: ``M_n / max(M_n)`` by the signed maximum; a maximum ``<= 0`` gives all zeros.
Labels without test samples get zero rows. The literal per-node procedure is in
:mod:`statmech_nn.snp.reference`.

Memory: one loader batch of activations per site plus ``chunk_size x tokens x nodes`` float64
intermediates (and ``labels x tokens x nodes`` sums for ``flatten``), independent of the number of
test samples.

This module is the pure science: it imports no I/O (no MLflow, no netCDF). The Dataset is built
in :mod:`statmech_nn.snp.dataset`, stored by :mod:`statmech_nn.snp.store` and logged in MLflow by
:mod:`statmech_nn.snp.runs`.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from statmech_nn.batches import padding_mask, split_batch
from statmech_nn.errors import ConfigError, UnknownNameError
from statmech_nn.readout import (
    READOUTS,
    FlattenReadout,
    Readout,
    SeqPoolReadout,
    make_loader,
    progress_bar,
    resolve_device,
)
from statmech_nn.readout.modules import site_mask
from statmech_nn.sites import ActivationCapture, Site
from statmech_nn.text_masks import (
    masked_head_seqpool,
    masked_mean,
    masked_seqpool,
    zero_padding,
)

__all__ = [
    "SILENCINGS",
    "SPLITS",
    "SiteMatrices",
    "check_options",
    "head_count",
    "head_pooled_features",
    "matrices",
    "node_features",
    "normalise",
]

SILENCINGS = ("pre_pool", "post_pool")
SPLITS = ("test", "val", "train")

FLUSH_SAMPLES = 1024
"""``flatten`` sums samples in float32 partials flushed to float64 every this many samples."""


@dataclass
class SiteMatrices:
    """Un-normalised matrices of one site: ``raw [N, L, L]``, ``head_raw [H, L, L]`` or None."""

    site: Site
    raw: torch.Tensor
    head_raw: torch.Tensor | None
    accuracy: float
    counts: torch.Tensor


def check_options(readout: str, silencing: str, split: str | None = None) -> None:
    """Raise :class:`UnknownNameError` for an unknown readout, silencing or split name."""
    if readout not in READOUTS:
        raise UnknownNameError(f"unknown readout {readout!r}: choose one of {', '.join(READOUTS)}")
    if silencing not in SILENCINGS:
        raise UnknownNameError(
            f"unknown silencing {silencing!r}: choose one of {', '.join(SILENCINGS)}"
        )
    if split is not None and split not in SPLITS:
        raise UnknownNameError(f"unknown split {split!r}: choose one of {', '.join(SPLITS)}")


def head_count(site: Site, nodes: int) -> int | None:
    """Number of heads of ``site`` with ``nodes`` channels (None without heads)."""
    if not site.heads:
        return None
    if nodes % site.heads:
        raise UnknownNameError(
            f"site {site.name!r}: {nodes} nodes do not split into {site.heads} equal heads"
        )
    return site.heads


def node_features(
    readout: Readout, a: torch.Tensor, silencing: str, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """``[B, N]`` per-node quantity ``q`` with field ``f_n(b, j) = W[j, n] q[b, n]``.

    ``mask [B, T]``: the real positions of text (``None``: all). Not defined for ``flatten``
    (whose field needs the token axis).
    """
    if isinstance(readout, SeqPoolReadout):
        g = readout.pool.weight[0].to(a.dtype)
        g0 = readout.pool.bias[0].to(a.dtype)
        if silencing == "post_pool":
            if mask is not None:
                return masked_seqpool(a, mask, g, g0)
            w = torch.softmax(a @ g + g0, dim=1)
            return torch.einsum("bt,btn->bn", w, a)
        e = a * g + g0
        if mask is not None:  # padding gets pooling weight exp(-inf) = 0
            e.masked_fill_(~mask.bool().unsqueeze(-1), float("-inf"))
        e -= e.amax(dim=1, keepdim=True)
        e.exp_()
        total = e.sum(dim=1)
        return e.mul_(a).sum(dim=1) / total
    return a.mean(dim=1) if mask is None else masked_mean(a, mask)


def head_pooled_features(
    readout: SeqPoolReadout, a: torch.Tensor, heads: int, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """``[B, N]``: each node pooled with the weights of its head alone (``pre_pool`` heads)."""
    b, t, n = a.shape
    g0 = readout.pool.bias[0].to(a.dtype)
    if mask is not None:
        return masked_head_seqpool(a, mask, readout.pool.weight[0].to(a.dtype), g0, heads)
    g = readout.pool.weight[0].to(a.dtype).view(heads, n // heads)
    ah = a.view(b, t, heads, n // heads)
    w = torch.softmax((ah * g).sum(-1) + g0, dim=1)
    return torch.einsum("bth,bthk->bhk", w, ah).reshape(b, n)


def _outer(means: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``out[n, i, j] = means[i, n] * w[j, n]``: every node's matrix at once."""
    return means.T[:, :, None] * w.T[:, None, :]


class _Accumulator:
    """Streaming class sums for one site."""

    def __init__(
        self,
        readout: Readout,
        site: Site,
        num_labels: int,
        silencing: str,
        dtype: torch.dtype,
        device: torch.device,
    ):
        self.readout, self.site, self.silencing = readout, site, silencing
        self.heads = head_count(site, readout.nodes)
        self.pre_pool_heads = (
            self.heads is not None
            and isinstance(readout, SeqPoolReadout)
            and silencing == "pre_pool"
        )
        shape = (
            (num_labels, readout.tokens, readout.nodes)
            if isinstance(readout, FlattenReadout)
            else (num_labels, readout.nodes)
        )
        self.sums = torch.zeros(shape, dtype=dtype, device=device)
        self.head_sums = (
            torch.zeros(num_labels, readout.nodes, dtype=dtype, device=device)
            if self.pre_pool_heads
            else None
        )
        self.correct = 0
        self._partial: torch.Tensor | None = None
        self._pending = 0

    def flush(self) -> None:
        """Move the float32 partial class sums of ``flatten`` into the float64 sums."""
        if self._partial is not None and self._pending:
            self.sums += self._partial
            self._partial.zero_()
        self._pending = 0

    def add(self, a: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        """Add one chunk: activations ``a [C, T, N]``, true labels ``y [C]``, padding ``mask``.

        Per-sample quantities are computed in ``a``'s dtype and summed per class in the
        accumulation dtype.
        """
        acc = self.sums.dtype
        if isinstance(self.readout, FlattenReadout):
            if mask is not None:
                a = zero_padding(a, mask)
            if a.dtype == acc:
                self.sums.index_add_(0, y, a)
                return
            if self._partial is None or self._partial.dtype != a.dtype:
                self._partial = torch.zeros(self.sums.shape, dtype=a.dtype, device=a.device)
            self._partial.index_add_(0, y, a)
            self._pending += len(y)
            if self._pending >= FLUSH_SAMPLES:
                self.flush()
            return
        q = node_features(self.readout, a, self.silencing, mask)
        self.sums.index_add_(0, y, q.to(acc))
        if self.head_sums is not None:
            pooled = head_pooled_features(self.readout, a, self.heads, mask)  # type: ignore[arg-type]
            self.head_sums.index_add_(0, y, pooled.to(acc))

    def finish(self, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        self.flush()
        denom = counts.clamp(min=1).to(self.sums.dtype)
        if isinstance(self.readout, FlattenReadout):
            w = self.readout.weight_jnt().to(self.sums.dtype)
            means = (self.sums / denom[:, None, None]).permute(2, 0, 1)
            raw = torch.bmm(means, w.permute(1, 2, 0))
        else:
            w = self.readout.fc.weight.to(self.sums.dtype)
            raw = _outer(self.sums / denom[:, None], w)
        head_raw = None
        if self.heads is not None:
            n, num_labels = raw.shape[0], raw.shape[1]
            if self.head_sums is not None:
                per_node = _outer(self.head_sums / denom[:, None], w)
            else:
                per_node = raw
            head_raw = per_node.view(self.heads, n // self.heads, num_labels, num_labels).sum(1)
        return raw, head_raw


def matrices(
    model: nn.Module,
    readouts: Mapping[str, Readout],
    data: Dataset | DataLoader,
    num_labels: int,
    silencing: str = "pre_pool",
    batch_size: int = 128,
    chunk_size: int = 128,
    device: str | torch.device | None = None,
    progress: bool = True,
    exact: bool = False,
    accuracy: bool = True,
) -> dict[str, SiteMatrices]:
    """Single-node (and single-head) matrices of every readout's site over ``data``.

    One pass of the frozen ``model`` (eval, no grad, cut after the last site) over ``data``;
    samples are processed in chunks of ``chunk_size``. Per-sample features are computed in
    float32 (float64 with ``exact``) and summed per class in float64. With ``accuracy`` (the
    default) each readout's accuracy is measured in the same pass (NaN otherwise). ``silencing``
    only matters for ``seqpool`` readouts.
    """
    check_options("seqpool", silencing)
    if chunk_size < 1:
        raise ConfigError(f"chunk_size must be >= 1, got {chunk_size}")
    if any(r.site is None for r in readouts.values()):
        raise ValueError("readouts must carry their site (built by train_readouts/make_readout)")
    dev = resolve_device(device)
    accs = {
        name: _Accumulator(
            copy.deepcopy(r).double() if exact else r,
            r.site,  # type: ignore[arg-type]
            num_labels,
            silencing,
            torch.float64,
            dev,
        )
        for name, r in readouts.items()
    }
    model.to(dev)
    was_training = model.training
    model.eval()
    counts = torch.zeros(num_labels, dtype=torch.long, device=dev)
    pass_ = _Pass(readouts, accs, num_labels, chunk_size, dev, exact, accuracy, counts)
    try:
        pass_.run(model, make_loader(data, batch_size), progress)
    finally:
        model.train(was_training)
    return {name: pass_.result(name) for name in readouts}


@dataclass
class _Pass:
    """One streaming pass over the data feeding every site's accumulator."""

    readouts: Mapping[str, Readout]
    accs: dict[str, _Accumulator]
    num_labels: int
    chunk_size: int
    device: torch.device
    exact: bool
    accuracy: bool
    counts: torch.Tensor
    seen: int = 0

    def run(self, model: nn.Module, loader: DataLoader, progress: bool) -> None:
        """Capture the sites batch by batch and add every batch to the accumulators."""
        sites = [r.site for r in self.readouts.values()]
        with ActivationCapture(model, sites) as capture, torch.no_grad():  # type: ignore[arg-type]
            bar = progress_bar(len(loader), "snp matrices", progress)
            for batch in loader:
                x, y = split_batch(batch, self.device)
                self.add_batch(capture(x), y, padding_mask(x))
                bar.update(1)
            bar.close()

    def add_batch(
        self,
        acts: Mapping[str, torch.Tensor],
        y: torch.Tensor,
        mask: torch.Tensor | None = None,
    ) -> None:
        """Label counts, readout accuracy and the class sums of one batch, chunk by chunk.

        ``mask [B, T]`` is the batch's padding mask (text) or ``None``.
        """
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= self.num_labels):
            raise ConfigError(f"labels outside 0..{self.num_labels - 1} in the data")
        self.counts += torch.bincount(y, minlength=self.num_labels)
        self.seen += len(y)
        masks = {name: site_mask(mask, a) for name, a in acts.items()}
        for name, readout in self.readouts.items():
            readout.check(acts[name])
            if self.accuracy:
                logits = readout(acts[name], masks[name])
                self.accs[name].correct += int((logits.argmax(1) == y).sum())
        for start in range(0, len(y), self.chunk_size):
            stop = start + self.chunk_size
            yc = y[start:stop]
            for name, acc in self.accs.items():
                a = acts[name][start:stop]
                m = masks[name]
                acc.add(a.double() if self.exact else a, yc, None if m is None else m[start:stop])

    def result(self, name: str) -> SiteMatrices:
        """The un-normalised matrices of site ``name`` once the pass is done."""
        acc = self.accs[name]
        with torch.no_grad():
            raw, head_raw = acc.finish(self.counts)
        return SiteMatrices(
            self.readouts[name].site,  # type: ignore[arg-type]
            raw.cpu(),
            None if head_raw is None else head_raw.cpu(),
            acc.correct / max(self.seen, 1) if self.accuracy else float("nan"),
            self.counts.cpu(),
        )


def normalise(raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(M / max(M), max(M))`` per leading index; matrices whose max is ``<= 0`` become zeros."""
    scale = raw.flatten(1).amax(dim=1)
    positive = scale > 0
    safe = torch.where(positive, scale, torch.ones_like(scale))
    norm = torch.where(positive[:, None, None], raw / safe[:, None, None], torch.zeros_like(raw))
    return norm, scale
