"""Head symmetry breaking of multi-head attention sites and its null model (methods.md section 6).

From each MHA node's diagonal labels ``D_n`` and its head: expertise counts ``c[h, l]``,
``p[h | l]`` and the order parameter ``Q = 1 - mean_l H(p(.|l)) / log H`` over the labels that at
least one node recognises (0: all heads alike; 1: each label owned by one head). The null model
permutes the node-to-head assignment (head sizes kept) R times, seeded, all permutations in one
batched matrix product.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import xarray as xr

from statmech_nn.errors import SchemaError
from statmech_nn.naming import check_theta
from statmech_nn.order.schema import node_matrices
from statmech_nn.order.stats import diagonal_labels, layer_values

_CHUNK = 256


def expertise(diagonal: np.ndarray, head: np.ndarray, n_heads: int) -> np.ndarray:
    """``c[..., h, l]``: nodes of head ``h`` recognising ``l``, from ``diagonal[..., N, L]``.

    ``head`` has shape ``(N,)`` or ``diagonal``'s batch shape plus ``(N,)``.
    """
    onehot = np.asarray(head)[..., None] == np.arange(n_heads)
    return np.einsum("...nh,...nl->...hl", onehot.astype(float), np.asarray(diagonal, float))


def order_parameter(counts: np.ndarray) -> np.ndarray:
    """``Q`` of expertise counts ``counts[..., H, L]``; NaN if no label is recognised or H < 2."""
    counts = np.asarray(counts, dtype=float)
    n_heads = counts.shape[-2]
    total = counts.sum(-2, keepdims=True)
    recognised = total[..., 0, :] > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        p = np.where(total > 0, counts / np.where(total > 0, total, 1), 0.0)
        plogp = np.where(p > 0, p * np.log(np.where(p > 0, p, 1)), 0.0)
    entropy = -plogp.sum(-2)
    n_rec = recognised.sum(-1)
    if n_heads < 2:
        return np.full(n_rec.shape, np.nan)
    mean_h = np.where(recognised, entropy, 0).sum(-1) / np.maximum(n_rec, 1)
    return np.where(n_rec > 0, 1.0 - mean_h / np.log(n_heads), np.nan)


def permuted_heads(head: np.ndarray, permutations: int, rng: np.random.Generator) -> np.ndarray:
    """``(R, N)``: R independent random permutations of the node-to-head assignment ``head``."""
    head = np.asarray(head)
    return rng.permuted(np.broadcast_to(head, (permutations, head.size)), axis=1)


def null_distribution(
    diagonal: np.ndarray, head: np.ndarray, n_heads: int, permutations: int, seed: int = 0
) -> np.ndarray:
    """``Q`` under R permuted head assignments: ``(layer, R)`` from ``diagonal[layer, N, L]``.

    Each layer gets its own permutations, drawn from one generator seeded with ``seed``.
    """
    diagonal = np.asarray(diagonal, dtype=np.float32)
    rng = np.random.default_rng(seed)
    out = np.empty((diagonal.shape[0], permutations))
    heads = np.arange(n_heads)
    for layer, diag in enumerate(diagonal):
        for start in range(0, permutations, _CHUNK):
            stop = min(start + _CHUNK, permutations)
            perm = permuted_heads(head, stop - start, rng)
            onehot = (perm[:, None, :] == heads[None, :, None]).astype(np.float32)
            out[layer, start:stop] = order_parameter(onehot @ diag)
    return out


def _recognised(matrices: xr.DataArray, theta: float) -> np.ndarray:
    """``(layer, node, label)`` diagonal labels, binarising only the diagonals, layer by layer.

    NaN padding needs no mask: an all-NaN node has a NaN diagonal, which never exceeds theta.
    """
    return np.stack(
        [diagonal_labels(layer_values(matrices, i), theta) for i in range(matrices.sizes["layer"])]
    )


def _jaccard(sets: np.ndarray) -> np.ndarray:
    """Mean pairwise Jaccard of boolean ``sets[..., H, L]``; pairs with empty union skipped."""
    n_heads = sets.shape[-2]
    pair_values, pair_used = [], []
    for a, b in itertools.combinations(range(n_heads), 2):
        union = (sets[..., a, :] | sets[..., b, :]).sum(-1)
        inter = (sets[..., a, :] & sets[..., b, :]).sum(-1)
        pair_values.append(np.where(union > 0, inter / np.maximum(union, 1), 0.0))
        pair_used.append(union > 0)
    if not pair_values:
        return np.full(sets.shape[:-2], np.nan)
    values, used = np.stack(pair_values), np.stack(pair_used)
    count = used.sum(0)
    return np.where(count > 0, (values * used).sum(0) / np.maximum(count, 1), np.nan)


def head_symmetry(
    ds: xr.Dataset,
    theta: float = 0.3,
    kind: str = "mha",
    permutations: int = 1000,
    seed: int = 0,
) -> xr.Dataset:
    """Expertise, ``Q`` and its permutation null model for every layer of site kind ``kind``.

    Variables: ``counts (layer, head, label)``, ``p (layer, head, label)`` (NaN for labels no node
    recognises), ``Q``, ``Q_null_mean``, ``Q_null_std`` (ddof 1), ``Q_z`` (NaN when the null std
    is 0), ``Q_pvalue = (1 + #{Q_null >= Q}) / (1 + R)``, ``labels_recognised``,
    ``owned_fraction`` (labels recognised by exactly one head, over labels recognised),
    ``jaccard_expertise`` (mean pairwise Jaccard of the heads' expertise sets ``c[h, l] > 0``)
    ``(layer,)``; ``labels_per_head (layer, head)``; ``Q_null (layer, permutation)``; and, when
    ``head_snp_{kind}`` is stored, the single-head diagonal labels ``head_diagonal
    (layer, head, label)``, their sizes ``head_labels (layer, head)`` and ``jaccard (layer,)``,
    the mean pairwise Jaccard of ``D_h``.
    """
    matrices = node_matrices(ds, kind)
    head = _head_of_nodes(matrices, kind)
    n_heads = int(head.max()) + 1
    diagonal = _recognised(matrices, check_theta(theta))
    counts = expertise(diagonal, head, n_heads)
    q = order_parameter(counts)
    null = null_distribution(diagonal, head, n_heads, permutations, seed)
    out = xr.Dataset(
        {
            "counts": (("layer", "head", "label"), counts.astype(np.int64)),
            "p": (("layer", "head", "label"), _head_given_label(counts)),
            "Q": ("layer", q),
            **_null_comparison(q, null, permutations),
            **_ownership(counts),
            "head_size": ("head", np.bincount(head, minlength=n_heads)),
        },
        coords={
            "layer": matrices["layer"].values,
            "head": np.arange(n_heads),
            "label": matrices["label_true"].values,
        },
        attrs={
            "kind": kind,
            "theta": float(theta),
            "permutations": int(permutations),
            "seed": int(seed),
        },
    )
    head_name = f"head_snp_{kind}"
    if head_name in ds:
        head_matrices = ds[head_name].transpose("layer", ..., "label_true", "label_out")
        head_diag = _recognised(head_matrices, check_theta(theta))
        out["head_diagonal"] = (("layer", "head", "label"), head_diag)
        out["head_labels"] = (("layer", "head"), head_diag.sum(-1))
        out["jaccard"] = ("layer", _jaccard(head_diag))
    return out


def _head_of_nodes(matrices: xr.DataArray, kind: str) -> np.ndarray:
    """The head index of every node, from the ``head`` coordinate; refused where there is none."""
    names = [c for c in (f"head_{kind}", "head") if c in matrices.coords]
    if not names:
        raise SchemaError(
            f"snp_{kind} has no 'head' coordinate on its nodes; head symmetry needs a site "
            "with heads (kind 'mha')"
        )
    head = matrices[names[0]].values.astype(int)
    if head.ndim != 1:
        raise SchemaError(f"snp_{kind}: the 'head' coordinate must be 1-D over nodes")
    return head


def _head_given_label(counts: np.ndarray) -> np.ndarray:
    """``p(h | l) = c[h, l] / sum_h c[h, l]``, NaN for labels no node recognises."""
    total = counts.sum(-2, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(total > 0, counts / total, np.nan)


def _null_comparison(
    q: np.ndarray, null: np.ndarray, permutations: int
) -> dict[str, tuple[Any, np.ndarray]]:
    """The null distribution, its mean and std, the z-score and the permutation p-value."""
    null_mean = null.mean(-1)
    null_std = null.std(-1, ddof=1) if permutations > 1 else np.full_like(null_mean, np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(null_std > 0, (q - null_mean) / np.where(null_std > 0, null_std, 1), np.nan)
    exceed = (null >= q[:, None] - 1e-12).sum(-1)
    pvalue = np.where(np.isnan(q), np.nan, (1 + exceed) / (1 + permutations))
    return {
        "Q_null": (("layer", "permutation"), null),
        "Q_null_mean": ("layer", null_mean),
        "Q_null_std": ("layer", null_std),
        "Q_z": ("layer", z),
        "Q_pvalue": ("layer", pvalue),
    }


def _ownership(counts: np.ndarray) -> dict[str, tuple[Any, np.ndarray]]:
    """Labels recognised, the fraction owned by one head, labels per head, expertise overlap."""
    owners = (counts > 0).sum(-2)
    recognised = owners > 0
    owned = np.where(
        recognised.any(-1),
        (owners == 1).sum(-1) / np.maximum(recognised.sum(-1), 1),
        np.nan,
    )
    return {
        "labels_recognised": ("layer", recognised.sum(-1)),
        "owned_fraction": ("layer", owned),
        "labels_per_head": (("layer", "head"), (counts > 0).sum(-1)),
        "jaccard_expertise": ("layer", _jaccard(counts > 0)),
    }
