"""ANDC readout masks (docs/methods.md section 8): one numpy core, thin xarray wrappers over it.

The core works on raw arrays ``[layer, node, label]`` (diagonals ``M_n[j, j]``) or
``[layer, node, label_true, label_out]`` (full matrices): :func:`andc_keep` keeps the connection
node -> label ``j`` iff ``M_n[j, j] > theta`` (``variant="diagonal"``) or iff ``j`` lies in one of
the node's clusters of at least ``min_cluster_size`` labels (``variant="cluster"``). Every
comparison is :func:`statmech_nn.naming.exceeds` (strict, in the stored values' dtype), the rule
``binarize`` uses. With the cluster rule of methods section 5 every diagonal label belongs to
some cluster (size-1 clusters count), so ``cluster`` with ``min_cluster_size=1`` keeps exactly
the ``diagonal`` connections; ``min_cluster_size=2`` drops the labels a node recognises alone.

The xarray wrappers (:func:`andc_mask`, :func:`random_mask`, :func:`pruned_fraction`) take the
SNP dataset and give boolean ``DataArray`` masks with dims ``(layer, node, label_out)`` (the node
dim is called ``node`` whatever the kind) and a ``valid (layer, node)`` coordinate that marks real
nodes (VGG layers narrower than the widest are NaN-padded in the SNP dataset).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import xarray as xr

from statmech_nn.errors import ConfigError, ThresholdError
from statmech_nn.naming import check_theta, exceeds
from statmech_nn.order.clusters import greedy_clusters
from statmech_nn.order.schema import node_matrices, valid_nodes

VARIANTS = ("diagonal", "cluster")

Thetas = float | Sequence[float] | Mapping[int, float] | np.ndarray

# -- the numpy core ------------------------------------------------------------------------------


def theta_per_layer(theta: Thetas | xr.DataArray, layers: Sequence[int]) -> np.ndarray:
    """One checked threshold per layer, as a float array aligned with ``layers``.

    ``theta`` is one global value, a sequence with one value per layer (in ``layers`` order), or
    a mapping ``{layer: theta}`` covering every layer. Each must lie in (0, 1).
    """
    layers = [int(v) for v in layers]
    values: list[Any]
    if isinstance(theta, xr.DataArray):
        theta = {int(k): float(v) for k, v in zip(theta["layer"].values, theta.values, strict=True)}
    if isinstance(theta, Mapping):
        missing = [layer for layer in layers if layer not in theta]
        if missing:
            raise ThresholdError(f"no threshold for layers {missing}; give one per layer {layers}")
        values = [theta[layer] for layer in layers]
    elif isinstance(theta, str | bytes) or not isinstance(theta, Iterable):
        values = [theta] * len(layers)
    else:
        values = list(theta)
        if len(values) != len(layers):
            raise ThresholdError(
                f"{len(values)} thresholds for {len(layers)} layers {layers}; give one per layer "
                "or a single global value"
            )
    return np.array([check_theta(v) for v in values], dtype=np.float64)


def keep_from_diagonals(diag: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """The diagonal ANDC rule: ``diag[layer, node, label] > theta[layer]`` (strict)."""
    return exceeds(np.asarray(diag), np.asarray(theta)[:, None, None])


def cluster_sizes(cluster: np.ndarray) -> np.ndarray:
    """Size of the cluster each label belongs to (0 for labels in no cluster)."""
    n_labels = cluster.shape[-1]
    flat = cluster.reshape(-1, n_labels)
    onehot = flat[:, :, None] == np.arange(n_labels)[None, None, :]
    counts = onehot.sum(axis=1)
    sizes = np.take_along_axis(counts, np.where(flat >= 0, flat, 0), axis=1)
    return np.where(flat >= 0, sizes, 0).reshape(cluster.shape)


def keep_from_clusters(
    matrices: np.ndarray, theta: np.ndarray, min_cluster_size: int = 1
) -> np.ndarray:
    """The cluster ANDC rule: keep the labels of clusters of ``>= min_cluster_size`` labels.

    ``matrices[layer, node, label_true, label_out]`` are binarised with ``theta[layer]`` by the
    strict rule, then clustered greedily (docs/methods.md section 5).
    """
    binary = exceeds(np.asarray(matrices), np.asarray(theta)[:, None, None, None])
    cluster = greedy_clusters(binary)
    return (cluster >= 0) & (cluster_sizes(cluster) >= int(min_cluster_size))


def check_variant(variant: str) -> str:
    """``variant`` if it is one of :data:`VARIANTS`, else :class:`ConfigError`."""
    if variant not in VARIANTS:
        raise ConfigError(f"unknown ANDC variant {variant!r}; choose one of {VARIANTS}")
    return variant


def valid_from_diagonals(diag: np.ndarray) -> np.ndarray:
    """``[layer, node]`` bool: the real nodes (not NaN padding) of ``diag[layer, node, label]``."""
    return ~np.isnan(np.asarray(diag)).all(-1)


def andc_keep(
    theta: np.ndarray,
    diag: np.ndarray,
    matrices: np.ndarray | None = None,
    variant: str = "diagonal",
    min_cluster_size: int = 1,
    valid: np.ndarray | None = None,
) -> np.ndarray:
    """ANDC keep mask ``[layer, node, label]`` for one threshold per layer; padding keeps nothing.

    ``diag`` are the diagonals (enough for ``diagonal``); ``variant="cluster"`` needs the full
    ``matrices``. ``valid [layer, node]`` defaults to the nodes whose diagonals are not all NaN.
    """
    check_variant(variant)
    if variant == "cluster":
        if matrices is None:
            raise ConfigError("the cluster ANDC variant needs the full SNP matrices")
        keep = keep_from_clusters(matrices, theta, min_cluster_size)
    else:
        keep = keep_from_diagonals(diag, theta)
    real = valid_from_diagonals(diag) if valid is None else np.asarray(valid, dtype=bool)
    return keep & real[..., None]


def random_keep(keep: np.ndarray, rng: np.random.Generator, draws: int = 1) -> np.ndarray:
    """Random masks with the same number of kept labels per row as ``keep[..., labels]``.

    Returns ``(draws, *keep.shape)``; each row keeps ``keep[...].sum(-1)`` labels drawn uniformly
    without replacement.
    """
    keep = np.asarray(keep, dtype=bool)
    counts = keep.sum(-1)
    scores = rng.random((draws, *keep.shape))
    ranks = scores.argsort(-1).argsort(-1)
    return ranks < counts[None, ..., None]


def pruned_fraction_of(
    keep: np.ndarray, real: np.ndarray | None = None, axis: int | tuple[int, ...] | None = None
) -> float | np.ndarray:
    """``1 - kept / all`` over the connections marked ``real`` (broadcast to ``keep``).

    Reduced over ``axis`` (all axes by default: a float); NaN where there is no real connection.
    """
    keep = np.asarray(keep, dtype=bool)
    mask = np.ones(keep.shape, bool) if real is None else np.broadcast_to(real, keep.shape)
    total = mask.sum(axis)
    kept = (keep & mask).sum(axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = np.where(total > 0, 1.0 - kept / np.where(total > 0, total, 1), np.nan)
    return float(frac) if np.ndim(frac) == 0 else frac


# -- thin xarray wrappers ------------------------------------------------------------------------


def _node_coords(matrices: xr.DataArray) -> dict[Hashable, Any]:
    """The layer/node coordinates of node matrices, plus ``label_out``."""
    coords = {k: v for k, v in matrices.coords.items() if set(v.dims) <= {"layer", "node"}}
    coords["label_out"] = matrices["label_out"]
    return coords


def diagonals(snp: xr.Dataset, kind: str = "ff") -> xr.DataArray:
    """``M_n[j, j]`` of every node: dims ``(layer, node, label_out)``, NaN for padded nodes."""
    matrices = node_matrices(snp, kind)
    diag = np.diagonal(matrices.values, axis1=2, axis2=3)
    return xr.DataArray(diag, dims=("layer", "node", "label_out"), coords=_node_coords(matrices))


def andc_mask(
    snp: xr.Dataset,
    theta: Thetas = 0.3,
    kind: str = "ff",
    variant: Literal["diagonal", "cluster"] = "diagonal",
    min_cluster_size: int = 1,
) -> xr.DataArray:
    """ANDC readout mask of site kind ``kind``: ``True`` where connection node -> label is kept.

    ``theta`` is global or per layer (see :func:`theta_per_layer`); ``variant`` is ``diagonal``
    (keep ``j`` iff ``B_n[j, j]``) or ``cluster`` (keep the labels of ``n``'s clusters of at
    least ``min_cluster_size`` labels). Dims ``(layer, node, label_out)``.
    """
    check_variant(variant)
    matrices = node_matrices(snp, kind)
    thetas = theta_per_layer(theta, [int(v) for v in matrices["layer"].values])
    valid = valid_nodes(matrices).values
    values = matrices.values
    diag = np.diagonal(values, axis1=2, axis2=3)
    keep = andc_keep(thetas, diag, values, variant, min_cluster_size, valid)
    coords = _node_coords(matrices)
    coords["valid"] = (("layer", "node"), valid)
    return xr.DataArray(
        keep,
        dims=("layer", "node", "label_out"),
        coords=coords,
        name=f"andc_{kind}",
        attrs={
            "kind": kind,
            "variant": variant,
            "theta": [float(t) for t in thetas],
            "min_cluster_size": int(min_cluster_size),
        },
    )


def random_mask(mask: xr.DataArray, seed: int = 0, draws: int = 1) -> xr.DataArray:
    """The random control: ``draws`` seeded masks keeping as many connections per node as ``mask``.

    Dims ``("draw", *mask.dims)``. Padded (invalid) nodes keep nothing, as in ``mask``.
    """
    values = random_keep(mask.values, np.random.default_rng(seed), draws)
    return xr.DataArray(
        values,
        dims=("draw", *mask.dims),
        coords={**dict(mask.coords.items()), "draw": np.arange(draws)},
        name=f"random_{mask.name}" if mask.name else "random_mask",
        attrs={**mask.attrs, "control": "random", "seed": int(seed)},
    )


def pruned_fraction(mask: xr.DataArray, keep_dims: Sequence[str] = ()) -> float | xr.DataArray:
    """``1 - kept / all`` over the connections of real nodes; per ``keep_dims`` if given.

    With no ``keep_dims`` a float over everything (a ``draw`` dim is averaged like any other:
    random draws keep the same counts, so it changes nothing).
    """
    real = None
    if "valid" in mask.coords:
        real = mask.coords["valid"].broadcast_like(mask).transpose(*mask.dims).values
    axis = tuple(i for i, d in enumerate(mask.dims) if d not in keep_dims)
    frac = pruned_fraction_of(mask.values, real, axis)
    if not keep_dims:
        return float(frac)
    kept_dims = [d for d in mask.dims if d in keep_dims]
    coords = {d: mask.coords[d] for d in kept_dims if d in mask.coords}
    return xr.DataArray(frac, dims=kept_dims, coords=coords)
