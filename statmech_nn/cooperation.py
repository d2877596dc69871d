"""Cooperation of nodes: the subset curve ``A(n)`` of methods section 11, on cached features.

Everything works on a site's cached activations, no model needed: :class:`SiteFeatures` holds
either pooled features ``[S, N]`` (one scalar per node: token means, or ``post_pool``
quantities; the readout is ``Linear(n, L, bias=False)`` on them) or token features ``[S, T, N]``
(the readout of ``ReadoutConfig.readout``, with padded positions masked as in
``statmech_nn.text_masks``), and the labels ``[S]``.

For each subset size ``n``, ``draws`` seeded random node subsets (optionally all within one head)
each get a fresh readout trained on those nodes only (SGD as in section 3, on the cached
features); the curve is its test accuracy beside the random guess ``1 / L``. Per subset, the
labels it recognises (diagonal of the normalised class-mean logits, i.e. the subset's summed
single-node matrix, above ``theta`` by the strict ``naming.exceeds``) are compared with the union
of its members' single-node labels ``D_n``: cooperation is the excess of the first over the second.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import numpy as np
import torch
import xarray as xr
from torch import nn

from statmech_nn import text_masks
from statmech_nn.errors import ConfigError
from statmech_nn.naming import check_theta, exceeds
from statmech_nn.readout import FlattenReadout, Readout, ReadoutConfig, SeqPoolReadout, make_readout
from statmech_nn.readout.fit import batches_per_epoch, fit_step, shuffled_rows
from statmech_nn.snp import normalise
from statmech_nn.train.steps import label_loss


@dataclass
class SiteFeatures:
    """Cached activations of one site: ``x`` ``[S, N]`` or ``[S, T, N]``, ``labels`` ``[S]``."""

    x: torch.Tensor
    labels: torch.Tensor
    mask: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.x.ndim not in (2, 3) or self.x.shape[0] != len(self.labels):
            raise ValueError(
                f"features must be [S, N] or [S, T, N] with one label per sample, got "
                f"{list(self.x.shape)} and {len(self.labels)} labels"
            )
        if self.mask is not None and self.x.ndim == 2:
            raise ValueError("a padding mask needs token features [S, T, N]")
        self.labels = torch.as_tensor(self.labels).long()

    @property
    def num_nodes(self) -> int:
        return int(self.x.shape[-1])

    def nodes(self, index: np.ndarray | list[int]) -> SiteFeatures:
        """The features of the given nodes only."""
        keep = torch.as_tensor(np.asarray(index), dtype=torch.long, device=self.x.device)
        return SiteFeatures(self.x.index_select(-1, keep), self.labels, self.mask)


def default_sizes(num_nodes: int) -> list[int]:
    """``1, 2, 4, ...`` below ``num_nodes``, then ``num_nodes``."""
    sizes = [1 << k for k in range(max(1, num_nodes).bit_length()) if (1 << k) < num_nodes]
    return sizes + [num_nodes]


def draw_subsets(
    num_nodes: int, size: int, draws: int, seed: int, heads: np.ndarray | None = None
) -> np.ndarray:
    """``[draws, size]`` sorted node indices, seeded by ``(seed, size)``.

    With ``heads`` (the head of every node), each draw first picks a head uniformly among those
    with at least ``size`` nodes, then its nodes within that head.
    """
    if not 1 <= size <= num_nodes or draws < 1:
        raise ConfigError(f"subset size must be in [1, {num_nodes}] and draws >= 1")
    rng = np.random.default_rng([int(seed), int(size)])
    out = np.empty((draws, size), dtype=np.int64)
    if heads is None:
        for d in range(draws):
            out[d] = np.sort(rng.choice(num_nodes, size, replace=False))
        return out
    heads = np.asarray(heads)
    names, counts = np.unique(heads, return_counts=True)
    eligible = names[counts >= size]
    if not len(eligible):
        raise ConfigError(f"no head has {size} nodes (largest: {counts.max()})")
    for d in range(draws):
        members = np.flatnonzero(heads == eligible[rng.integers(len(eligible))])
        out[d] = np.sort(rng.choice(members, size, replace=False))
    return out


def new_readout(features: SiteFeatures, num_labels: int, kind: str, seed: int) -> nn.Module:
    """A fresh readout for ``features``: ``Linear`` for pooled ones, else ``make_readout``."""
    if features.x.ndim == 3:
        _, t, n = features.x.shape
        return make_readout(kind, t, n, num_labels, seed=seed).to(features.x.device)
    fc = nn.Linear(features.num_nodes, num_labels, bias=False)
    gen = torch.Generator().manual_seed(int(seed))
    bound = 1.0 / math.sqrt(features.num_nodes)
    with torch.no_grad():
        fc.weight.copy_(torch.rand(fc.weight.shape, generator=gen) * 2 * bound - bound)
    return fc.to(features.x.device)


def pooled(readout: nn.Module, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """The readout's per-node input: ``[S, N]`` (pooled), or ``[S, T, N]`` zero-padded (flatten)."""
    if x.ndim == 2:
        return x
    if isinstance(readout, FlattenReadout):
        return text_masks.zero_padding(x, mask)
    if isinstance(readout, SeqPoolReadout):
        g, g0 = readout.pool.weight[0], readout.pool.bias[0]
        return text_masks.masked_seqpool(x, mask, g, g0)
    return text_masks.masked_mean(x, mask)


def linear(readout: nn.Module) -> nn.Linear:
    """The final ``Linear(nodes, labels)`` of a readout (a pooled-feature readout is one)."""
    fc = getattr(readout, "fc", readout) if isinstance(readout, Readout) else readout
    if not isinstance(fc, nn.Linear):
        raise TypeError(f"no linear layer in {type(readout).__name__}")
    return fc


def logits(readout: nn.Module, features: SiteFeatures) -> torch.Tensor:
    """``[S, L]`` logits of ``readout`` on ``features``, padding masked."""
    z = pooled(readout, features.x, features.mask)
    if isinstance(readout, FlattenReadout):
        return readout(z)
    return linear(readout)(z)


def fit_readout(
    features: SiteFeatures, num_labels: int, config: ReadoutConfig, seed: int | None = None
) -> nn.Module:
    """A readout trained on cached ``features`` (SGD, cosine per step, seeded shuffling)."""
    seed = config.seed if seed is None else int(seed)
    readout = new_readout(features, num_labels, config.readout, seed)
    samples, size = len(features.labels), config.batch_size
    step = fit_step(readout.parameters(), config, batches_per_epoch(samples, size))
    for rows in shuffled_rows(samples, size, config.epochs, seed, features.x.device):
        mask = None if features.mask is None else features.mask[rows]
        batch = SiteFeatures(features.x[rows], features.labels[rows], mask)
        step(label_loss(logits(readout, batch), batch.labels))
    readout.eval()
    readout.requires_grad_(False)
    return readout


def class_means(values: torch.Tensor, labels: torch.Tensor, num_labels: int) -> torch.Tensor:
    """``[L, ...]``: the mean of ``values`` over the samples of each true label."""
    counts = torch.bincount(labels, minlength=num_labels)
    if bool((counts == 0).any()):
        missing = torch.nonzero(counts == 0).flatten().tolist()
        raise ConfigError(f"labels {missing} have no test sample: their matrix rows are undefined")
    sums = torch.zeros((num_labels, *values.shape[1:]), dtype=values.dtype, device=values.device)
    sums.index_add_(0, labels, values)
    return sums / counts.to(values.dtype).view(-1, *([1] * (values.ndim - 1)))


def recognised_labels(matrix: torch.Tensor, theta: float) -> np.ndarray:
    """Bool ``[L]``: the diagonal of the normalised ``[L, L]`` matrix above ``theta`` (strict)."""
    norm, _ = normalise(matrix.unsqueeze(0))
    return np.asarray(exceeds(torch.diagonal(norm[0]).cpu().numpy(), check_theta(theta)))


def single_node_matrices(
    readout: nn.Module, features: SiteFeatures, num_labels: int
) -> torch.Tensor:
    """Raw ``[N, L, L]`` single-node matrices of ``readout`` (``post_pool`` for ``seqpool``).

    ``M_n[i, j]`` is the class-``i`` mean of node ``n``'s field on output ``j``; the fields of all
    nodes add up to the logits.
    """
    with torch.no_grad():
        z = class_means(pooled(readout, features.x, features.mask), features.labels, num_labels)
        if isinstance(readout, FlattenReadout):
            w = readout.weight_jnt()  # [L, N, T]; z is [L_true, T, N]
            return torch.einsum("itn,jnt->nij", z, w)
        w = linear(readout).weight  # [L, N]
        return z.T[:, :, None] * w.T[:, None, :]


def single_node_labels(matrices: torch.Tensor, theta: float) -> np.ndarray:
    """Bool ``[N, L]``: each node's ``D_n`` from its raw or normalised matrices ``[N, L, L]``."""
    norm, _ = normalise(matrices)
    return np.asarray(
        exceeds(torch.diagonal(norm, dim1=1, dim2=2).cpu().numpy(), check_theta(theta))
    )


def draw_seed(seed: int, size: int, draw: int) -> int:
    """The readout seed of one draw (depends only on the run seed, the size and the draw)."""
    return (int(seed) * 1_000_003 + zlib.crc32(f"{size}/{draw}".encode())) % (2**63 - 1)


def subset_curve(
    train: SiteFeatures,
    test: SiteFeatures,
    num_labels: int,
    single_labels: np.ndarray,
    sizes: list[int] | None = None,
    draws: int = 5,
    seed: int = 0,
    config: ReadoutConfig | None = None,
    heads: np.ndarray | None = None,
    theta: float = 0.3,
) -> xr.Dataset:
    """The subset curve of one site: dims ``(size, draw)``, ``member`` and ``label``.

    ``single_labels`` is the ``[N, L]`` bool ``D_n`` of every node (e.g. from the site's SNP
    tensor via :func:`single_node_labels`).
    """
    config = config or ReadoutConfig()
    theta = check_theta(theta)
    n_nodes = train.num_nodes
    single = np.asarray(single_labels, dtype=bool)
    if single.shape != (n_nodes, num_labels):
        raise ValueError(f"single_labels must be [{n_nodes}, {num_labels}], got {single.shape}")
    sizes = default_sizes(n_nodes) if sizes is None else sorted({int(s) for s in sizes})
    shape = (len(sizes), draws)
    acc = np.zeros(shape)
    recognised = np.zeros((*shape, num_labels), dtype=bool)
    union = np.zeros((*shape, num_labels), dtype=bool)
    members = np.full((*shape, max(sizes)), -1, dtype=np.int64)
    for si, size in enumerate(sizes):
        subsets = draw_subsets(n_nodes, size, draws, seed, heads)
        for d, nodes in enumerate(subsets):
            readout = fit_readout(train.nodes(nodes), num_labels, config, draw_seed(seed, size, d))
            sub_test = test.nodes(nodes)
            with torch.no_grad():
                out = logits(readout, sub_test)
            acc[si, d] = float((out.argmax(1) == sub_test.labels).float().mean())
            recognised[si, d] = recognised_labels(
                class_means(out, sub_test.labels, num_labels), theta
            )
            union[si, d] = single[nodes].any(axis=0)
            members[si, d, :size] = nodes
    dims = ("size", "draw")
    return xr.Dataset(
        {
            "accuracy": (dims, acc),
            "recognised": ((*dims, "label"), recognised),
            "union": ((*dims, "label"), union),
            "recognised_labels": (dims, recognised.sum(-1)),
            "union_labels": (dims, union.sum(-1)),
            "cooperation": (dims, recognised.sum(-1) - union.sum(-1)),
            "new_labels": (dims, (recognised & ~union).sum(-1)),
            "nodes": ((*dims, "member"), members),
        },
        coords={"size": sizes, "draw": np.arange(draws), "label": np.arange(num_labels)},
        attrs={
            "chance": 1.0 / num_labels,
            "theta": theta,
            "seed": int(seed),
            "draws": int(draws),
            "within_head": int(heads is not None),
            "features": "tokens" if train.x.ndim == 3 else "pooled",
            "readout_config": config.to_json(),
        },
    )
