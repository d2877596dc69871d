"""How the labels single nodes group together align with a dataset's superclasses (methods.md 5).

The ground truth of the procedural datasets is a superclass x subclass hierarchy. A node whose
labels were grouped by what the images share would put labels of one superclass together. The
measure is a pooled pair purity: over the nodes of a layer, of all ordered pairs of distinct
labels that one node groups together, the fraction whose two labels share a superclass. Two
groupings are measured: ``cluster`` (the two labels are in the same greedy cluster of the node,
section 5) and ``node`` (the node recognises both, i.e. both are on its binarised diagonal).

The null model permutes the label-to-superclass assignment (superclass sizes kept) ``R`` times,
seeded, keeping every node's grouping: it asks whether the grouping follows the hierarchy more
than an arbitrary relabelling would. ``chance`` is its exact expectation, the fraction of all
ordered label pairs that share a superclass. Pure numpy and xarray, no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import xarray as xr

from statmech_nn.errors import ConfigError

__all__ = [
    "GROUPINGS",
    "chance_purity",
    "cluster_pairs",
    "pair_purity",
    "purity_null",
    "recognised_pairs",
    "superclass_alignment",
]

GROUPINGS = ("cluster", "node")
"""What makes two labels a pair: one cluster of a node, or one node's diagonal."""


def _without_self_pairs(counts: np.ndarray) -> np.ndarray:
    out = np.array(counts, dtype=np.float64)
    np.fill_diagonal(out, 0.0)
    return out


def cluster_pairs(cluster: np.ndarray) -> np.ndarray:
    """``[L, L]``: over nodes, how often labels ``l != m`` share one cluster of a node.

    ``cluster[node, label]`` is the cluster index of the label within its node, -1 for a label
    the node does not recognise (:func:`statmech_nn.order.clusters.node_clusters`).
    """
    cluster = np.asarray(cluster)
    n_nodes, n_labels = cluster.shape
    n_clusters = int(cluster.max(initial=-1)) + 1
    if n_clusters == 0:
        return np.zeros((n_labels, n_labels))
    onehot = cluster[..., None] == np.arange(n_clusters)  # [N, L, K]
    flat = onehot.transpose(1, 0, 2).reshape(n_labels, n_nodes * n_clusters).astype(np.float64)
    return _without_self_pairs(flat @ flat.T)


def recognised_pairs(diagonal: np.ndarray) -> np.ndarray:
    """``[L, L]``: over nodes, how often labels ``l != m`` are both on a node's diagonal."""
    diag = np.asarray(diagonal, dtype=np.float64)
    return _without_self_pairs(diag.T @ diag)


def _onehot(superclass: np.ndarray) -> np.ndarray:
    return (superclass[..., None] == np.unique(superclass)).astype(np.float64)


def pair_purity(pairs: np.ndarray, superclass: Sequence[int] | np.ndarray) -> float:
    """Fraction of the pairs ``pairs[l, m]`` whose labels share a superclass (NaN: no pairs)."""
    total = float(pairs.sum())
    if total == 0:
        return float("nan")
    groups = _onehot(np.asarray(superclass))
    return float(((pairs @ groups) * groups).sum() / total)


def purity_null(
    pairs: np.ndarray, superclass: Sequence[int] | np.ndarray, permutations: int, seed: int = 0
) -> np.ndarray:
    """``[R]``: :func:`pair_purity` under ``R`` seeded permutations of the superclass labels."""
    labels = np.asarray(superclass)
    total = float(pairs.sum())
    if total == 0:
        return np.full(permutations, np.nan)
    rng = np.random.default_rng(seed)
    shuffled = rng.permuted(np.broadcast_to(labels, (permutations, labels.size)), axis=1)
    groups = _onehot(shuffled)  # [R, L, S]
    return np.einsum("lm,rms,rls->r", pairs, groups, groups) / total


def chance_purity(superclass: Sequence[int] | np.ndarray) -> float:
    """The null's expectation: the fraction of ordered distinct-label pairs in one superclass."""
    labels = np.asarray(superclass)
    sizes = np.unique(labels, return_counts=True)[1].astype(np.float64)
    n = labels.size
    return float((sizes * (sizes - 1)).sum() / (n * (n - 1)))


def _check(stats: xr.Dataset, superclass: np.ndarray, permutations: int) -> None:
    if permutations < 1:
        raise ConfigError(f"permutations must be >= 1, got {permutations}")
    n_labels = stats.sizes["label"]
    if superclass.shape != (n_labels,):
        raise ConfigError(
            f"the superclass map has {superclass.size} entries but the SNP tensor {n_labels} labels"
        )
    if (superclass < 0).any():
        raise ConfigError(
            f"labels {np.flatnonzero(superclass < 0).tolist()} have no superclass; the alignment "
            "needs every label's"
        )
    if np.unique(superclass).size < 2:
        raise ConfigError("a superclass alignment needs at least two superclasses")


def superclass_alignment(
    stats: xr.Dataset,
    superclass: Sequence[int] | np.ndarray,
    permutations: int = 1000,
    seed: int = 0,
) -> xr.Dataset:
    """Pair purity per layer and grouping, with its permutation null and p-value.

    ``stats`` is :func:`statmech_nn.order.stats.site_statistics` output (``cluster`` and
    ``diagonal`` over ``(layer, node, label)``; invalid nodes have no labels). Returns, for each
    grouping ``g``: ``{g}_purity``, ``{g}_null_mean``, ``{g}_null_std``, ``{g}_pvalue`` (``(1 +
    #null >= observed) / (1 + R)``) and ``{g}_pairs`` over ``layer``, ``{g}_null`` over ``(layer,
    permutation)``; ``chance`` in the attrs with ``permutations`` and ``seed``.
    """
    labels = np.asarray(superclass)
    _check(stats, labels, permutations)
    out: dict[str, tuple[tuple[str, ...], np.ndarray]] = {}
    for grouping in GROUPINGS:
        observed, nulls, counts = [], [], []
        for layer in range(stats.sizes["layer"]):
            if grouping == "cluster":
                pairs = cluster_pairs(stats["cluster"].isel(layer=layer).values)
            else:
                pairs = recognised_pairs(stats["diagonal"].isel(layer=layer).values)
            observed.append(pair_purity(pairs, labels))
            nulls.append(purity_null(pairs, labels, permutations, seed + layer))
            counts.append(pairs.sum())
        q, null = np.array(observed), np.stack(nulls)
        exceed = (null >= q[:, None] - 1e-12).sum(-1)
        out[f"{grouping}_purity"] = (("layer",), q)
        out[f"{grouping}_null_mean"] = (("layer",), null.mean(-1))
        out[f"{grouping}_null_std"] = (
            ("layer",),
            null.std(-1, ddof=1) if permutations > 1 else np.full(q.shape, np.nan),
        )
        out[f"{grouping}_pvalue"] = (
            ("layer",),
            np.where(np.isnan(q), np.nan, (1 + exceed) / (1 + permutations)),
        )
        out[f"{grouping}_pairs"] = (("layer",), np.array(counts))
        out[f"{grouping}_null"] = (("layer", "permutation"), null)
    attrs = {"chance": chance_purity(labels), "permutations": int(permutations), "seed": int(seed)}
    return xr.Dataset(out, coords={"layer": stats["layer"].values}, attrs=attrs)
