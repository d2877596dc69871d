"""Per-node and per-site cluster statistics and SNR of one site kind (docs/methods.md section 5).

SNR variants (option ``snr``), each in two forms:

- ``labels`` (headline): per node ``S_n`` over ``noise_n``.
- ``elements``: per node ``sum |c|^2`` over ``noise_n``.
- ``per_cluster``: per cluster ``|c|`` over ``cluster_noise_c``, the above-threshold elements in
  the columns of the cluster's labels outside every cluster block.

The *ratio* form (``snr_{variant}``, the headline) divides the mean numerator by the mean
denominator over the units: nodes with at least one cluster (``labels``, ``elements``) or all
clusters of the site (``per_cluster``). It is ``inf`` when the units have signal but no noise at
all, NaN when there are no units. The *mean* form (``snr_{variant}_mean``) averages the per-unit
ratios; **zero-noise rule**: units whose denominator is 0 are excluded from that mean and counted
in ``snr_{variant}_zero_noise``. The per-node ratios themselves (``snr_{variant}_node``) are kept
as computed: ``inf`` for a node with clusters and no noise, NaN for a node without clusters; for
``per_cluster`` the per-node value is ``S_n / sum_c cluster_noise_c``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import xarray as xr

from statmech_nn.naming import check_theta, exceeds
from statmech_nn.order.clusters import NodeClusters, clusters_of, node_summary
from statmech_nn.order.schema import kinds, node_matrices

SNR_VARIANTS = ("labels", "elements", "per_cluster")

# Budget, in matrix elements, of one chunk of nodes binarised at once (8 MiB of flags).
CHUNK_ELEMENTS = 1 << 23


def layer_values(matrices: xr.DataArray, layer: int) -> np.ndarray:
    """One layer's ``(node, label_true, label_out)`` matrices: a view, or one layer loaded."""
    return np.asarray(matrices.isel(layer=layer).values)


def _node_chunks(n_nodes: int, n_labels: int) -> Iterator[slice]:
    step = max(1, CHUNK_ELEMENTS // max(1, n_labels * n_labels))
    for start in range(0, n_nodes, step):
        yield slice(start, min(start + step, n_nodes))


def real_nodes(values: np.ndarray) -> np.ndarray:
    """``(node,)`` bool: not all-NaN padding; only nodes with an all-NaN diagonal are scanned."""
    valid = np.ones(values.shape[0], dtype=bool)
    suspects = np.flatnonzero(np.isnan(np.diagonal(values, axis1=-2, axis2=-1)).all(-1))
    for chunk in _node_chunks(suspects.size, values.shape[-1]):
        nodes = suspects[chunk]
        valid[nodes] = ~np.isnan(values[nodes]).all(axis=(-2, -1))
    return valid


def diagonal_labels(values: np.ndarray, theta: float) -> np.ndarray:
    """``(node, label)`` bool: ``B_n[l, l]``, binarising the diagonals only."""
    return exceeds(np.diagonal(values, axis1=-2, axis2=-1), theta)


def layer_clusters(values: np.ndarray, theta: float) -> NodeClusters:
    """:class:`NodeClusters` of one layer's float ``(node, L, L)`` matrices, chunk by chunk.

    Only the column counts need whole binarised matrices (one chunk of nodes at a time); the
    greedy rule reads the binarised mutual ones at each node's diagonal labels.
    """
    n_nodes, n_labels = values.shape[0], values.shape[-1]
    diagonal = diagonal_labels(values, theta)
    column_ones = np.empty((n_nodes, n_labels), dtype=np.int64)
    for chunk in _node_chunks(n_nodes, n_labels):
        column_ones[chunk] = exceeds(values[chunk], theta).sum(axis=-2)

    def mutual(nodes: np.ndarray, labels: np.ndarray) -> np.ndarray:
        sub = exceeds(values[nodes[:, None, None], labels[:, :, None], labels[:, None, :]], theta)
        return sub & sub.transpose(0, 2, 1)

    return node_summary(diagonal, clusters_of(diagonal, mutual), column_ones)


def _stacked(layers: list[NodeClusters]) -> NodeClusters:
    return NodeClusters(
        **{name: np.stack([vars(nc)[name] for nc in layers]) for name in vars(layers[0])}
    )


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num = np.asarray(num, dtype=float)
    den = np.asarray(den, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = num / den
    return np.where((den == 0) & (num > 0), np.inf, out)


def _masked_mean(values: np.ndarray, mask: np.ndarray, axis) -> np.ndarray:
    count = mask.sum(axis=axis)
    total = np.where(mask, values, 0.0).sum(axis=axis)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _snr_forms(num: np.ndarray, den: np.ndarray, units: np.ndarray, axis):
    ratio = _ratio(_masked_mean(num, units, axis), _masked_mean(den, units, axis))
    finite = units & (den > 0)
    per_unit = np.where(finite, num / np.where(den > 0, den, 1), 0.0)
    return ratio, _masked_mean(per_unit, finite, axis), (units & (den == 0)).sum(axis=axis)


def site_statistics(ds: xr.Dataset, kind: str, theta: float = 0.3) -> xr.Dataset:
    """Clusters, signal, noise and SNR of every node of site kind ``kind``, and their site means.

    Returns a Dataset with per-node variables ``(layer, node)`` (NaN on padded nodes), per-label
    variables ``(layer, node, label)``, per-site variables ``(layer,)`` and the cluster-size
    histogram ``cluster_size_hist (layer, size)``. Site means come in two flavours:
    ``*_clustered`` over nodes with at least one cluster, ``*_all`` over all (real) nodes.
    """
    matrices = node_matrices(ds, kind)
    theta = check_theta(theta)
    valid, layers = [], []
    for layer in range(matrices.sizes["layer"]):  # one layer's matrices in memory at a time
        values = layer_values(matrices, layer)
        valid.append(real_nodes(values))
        layers.append(layer_clusters(values, theta))
    nodes = _NodeCounts(np.stack(valid), _stacked(layers))
    out = _per_node_variables(nodes, matrices)
    _add_site_means(out, nodes)
    _add_size_histogram(out, nodes, matrices.sizes["label_true"])
    _add_snr(out, nodes)
    out = out.assign_coords(layer=matrices["layer"].values)
    out.attrs = {"kind": kind, "theta": theta, "snr_variants": list(SNR_VARIANTS)}
    if f"acc_{kind}" in ds:
        out["accuracy"] = ("layer", ds[f"acc_{kind}"].values)
    return out


_SITE_AXIS = 1  # the node axis of (layer, node) arrays


class _NodeCounts:
    """Per-node counts of one site kind, ``(layer, node)`` floats, and which nodes are real."""

    def __init__(self, valid: np.ndarray, nc: NodeClusters) -> None:
        self.valid = valid
        self.nc = nc
        self.signal = nc.signal.astype(float)
        self.noise = nc.noise.astype(float)
        self.elements = nc.in_blocks.astype(float)
        self.n_clusters = nc.n_clusters.astype(float)
        self.clustered = valid & (self.n_clusters > 0)
        self.exists = nc.sizes > 0
        self.pooled_cluster_noise = np.where(self.exists, nc.cluster_noise, 0).sum(-1).astype(float)

    def per_node(self, values: np.ndarray) -> np.ndarray:
        """``values`` on real nodes, NaN on padding."""
        return np.where(self.valid, values, np.nan)

    def if_clustered(self, values: np.ndarray) -> np.ndarray:
        """``values`` on nodes with a cluster, NaN elsewhere."""
        return np.where(self.clustered, values, np.nan)


def _per_node_variables(nodes: _NodeCounts, matrices: xr.DataArray) -> xr.Dataset:
    """The ``(layer, node)`` and ``(layer, node, label)`` variables of :func:`site_statistics`."""
    dims = ("layer", "node")
    node_coords = {k: v for k, v in matrices.coords.items() if set(v.dims) <= {"layer", "node"}}
    nc, valid = nodes.nc, nodes.valid
    signal, noise, n_clusters = nodes.signal, nodes.noise, nodes.n_clusters
    return xr.Dataset(
        {
            "valid": (dims, valid),
            "signal": (dims, nodes.per_node(signal)),
            "noise": (dims, nodes.per_node(noise)),
            "in_blocks": (dims, nodes.per_node(nodes.elements)),
            "ones": (dims, nodes.per_node(nc.ones.astype(float))),
            "n_clusters": (dims, nodes.per_node(n_clusters)),
            "mean_cluster_size": (dims, nodes.if_clustered(signal / np.maximum(n_clusters, 1))),
            "diagonal": ((*dims, "label"), nc.diagonal & valid[..., None]),
            "cluster": ((*dims, "label"), np.where(valid[..., None], nc.cluster, -1)),
            "snr_labels_node": (dims, nodes.if_clustered(_ratio(signal, noise))),
            "snr_elements_node": (dims, nodes.if_clustered(_ratio(nodes.elements, noise))),
            "snr_per_cluster_node": (
                dims,
                nodes.if_clustered(_ratio(signal, nodes.pooled_cluster_noise)),
            ),
        },
        coords={**node_coords, "label": matrices["label_true"].values},
    )


def _add_site_means(out: xr.Dataset, nodes: _NodeCounts) -> None:
    """Node counts and the ``*_clustered`` / ``*_all`` means per layer, and the cluster size."""
    valid, clustered = nodes.valid, nodes.clustered
    out["nodes"] = ("layer", valid.sum(_SITE_AXIS))
    out["nodes_clustered"] = ("layer", clustered.sum(_SITE_AXIS))
    for name, values in (
        ("signal", nodes.signal),
        ("noise", nodes.noise),
        ("clusters", nodes.n_clusters),
    ):
        out[f"{name}_clustered"] = ("layer", _masked_mean(values, clustered, _SITE_AXIS))
        out[f"{name}_all"] = ("layer", _masked_mean(values, valid, _SITE_AXIS))
    total_clusters = np.where(valid, nodes.n_clusters, 0).sum(_SITE_AXIS)
    labels_in_clusters = np.where(valid, nodes.signal, 0).sum(_SITE_AXIS)
    with np.errstate(divide="ignore", invalid="ignore"):
        size = np.where(
            total_clusters > 0, labels_in_clusters / np.maximum(total_clusters, 1), np.nan
        )
    out["cluster_size"] = ("layer", size)


def _add_size_histogram(out: xr.Dataset, nodes: _NodeCounts, n_labels: int) -> None:
    """``cluster_size_hist (layer, size)``: clusters of each size over the real nodes."""
    sizes = np.where(nodes.valid[..., None], nodes.nc.sizes, 0)
    hist = np.stack(
        [np.bincount(s[s > 0], minlength=n_labels + 1)[1:] for s in sizes.reshape(len(sizes), -1)]
    )
    out["cluster_size_hist"] = (("layer", "size"), hist)
    out.coords["size"] = np.arange(1, n_labels + 1)


def _add_snr(out: xr.Dataset, nodes: _NodeCounts) -> None:
    """The three SNR variants per layer, each as a ratio of means, a mean of ratios and the
    fraction of zero-noise units."""
    for variant, num, den in (
        ("labels", nodes.signal, nodes.noise),
        ("elements", nodes.elements, nodes.noise),
    ):
        _put_snr(out, variant, _snr_forms(num, den, nodes.clustered, _SITE_AXIS))
    units = nodes.exists & nodes.valid[..., None]
    flat = units.reshape(len(units), -1)
    per_cluster = _snr_forms(
        nodes.nc.sizes.reshape(len(units), -1).astype(float),
        nodes.nc.cluster_noise.reshape(len(units), -1).astype(float),
        flat,
        _SITE_AXIS,
    )
    _put_snr(out, "per_cluster", per_cluster)


def _put_snr(out: xr.Dataset, variant: str, forms: tuple[Any, Any, Any]) -> None:
    ratio, mean, zero = forms
    out[f"snr_{variant}"] = ("layer", ratio)
    out[f"snr_{variant}_mean"] = ("layer", mean)
    out[f"snr_{variant}_zero_noise"] = ("layer", zero)


def statistics(
    ds: xr.Dataset, theta: float = 0.3, kinds_: list[str] | None = None
) -> dict[str, xr.Dataset]:
    """:func:`site_statistics` of every site kind of ``ds`` (or of ``kinds_``), keyed by kind."""
    return {kind: site_statistics(ds, kind, theta) for kind in (kinds_ or kinds(ds))}


def snr(stats: xr.Dataset, variant: str = "labels", form: str = "ratio") -> xr.DataArray:
    """The site SNR ``(layer,)`` of ``variant`` (labels/elements/per_cluster), form ratio/mean."""
    from statmech_nn.errors import UnknownNameError

    if variant not in SNR_VARIANTS:
        raise UnknownNameError(f"unknown SNR variant {variant!r}; choose one of {SNR_VARIANTS}")
    if form not in ("ratio", "mean"):
        raise UnknownNameError(f"unknown SNR form {form!r}; choose 'ratio' or 'mean'")
    return stats[f"snr_{variant}" + ("_mean" if form == "mean" else "")]
