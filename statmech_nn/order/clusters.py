"""Per-node clusters, signal and noise of binarised single-node matrices (methods.md section 5).

Pure numpy; every leading axis of ``B[..., label_true, label_out]`` is a batch of nodes. The
greedy cluster rule is run as one ascending pass over each node's *diagonal* labels (the only
labels that can seed or join a cluster), each label offered to the node's existing clusters in
creation order: that is the rule of docs/methods.md (seed = first unassigned diagonal label, grow it
over the later labels, repeat) because a cluster's membership among labels below ``l`` never
depends on what later clusters do. Nodes are sorted by their number of diagonal labels ``d`` and
processed in groups under an element budget, so one step touches ``group x clusters`` flags and
the work grows with ``d^2`` per node, not with ``labels^2``.

Signal and noise need no cluster mask either: a cluster is an all-ones block, so the noise in
column ``j`` is the column's ones minus the size of ``j``'s cluster (0 for labels off the
diagonal), and the elements inside blocks are ``sum |c|^2``. ``node_summary`` builds
:class:`NodeClusters` from the diagonal, the cluster indices and the column counts alone, which
lets the caller binarise float matrices chunk by chunk (``order.stats``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

# Budget, in elements, of one group's ``nodes x d x d`` mutual-ones and compatibility flags.
GROUP_ELEMENTS = 1 << 22

# ``mutual(nodes, labels)`` -> ``(g, d, d)`` bool: ``B[l_a, l_b] & B[l_b, l_a]`` of node
# ``nodes[i]`` at its diagonal labels ``labels[i]``.
MutualGather = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class NodeClusters:
    """Clusters of a batch of nodes; arrays have the batch shape ``S`` of the input in front.

    - ``diagonal``: ``S + (L,)`` bool, the labels the node recognises (``B[l, l]``).
    - ``cluster``: ``S + (L,)`` int, the cluster index of each label within its node
      (0, 1, ... in order of creation, i.e. of the seeds), -1 for labels off the diagonal.
    - ``sizes``: ``S + (L,)`` int, size of cluster ``k`` (0 for clusters that do not exist).
    - ``ones``: ``S`` int, above-threshold elements of ``B``.
    - ``in_blocks``: ``S`` int, ``sum |c|^2``: elements inside cluster blocks (all ones).
    - ``column_noise``: ``S + (L,)`` int, above-threshold elements of each column outside every
      cluster block.
    - ``cluster_noise``: ``S + (L,)`` int, ``column_noise`` summed over the columns of cluster
      ``k``'s labels (the denominator of the ``per_cluster`` SNR).
    """

    diagonal: np.ndarray
    cluster: np.ndarray
    sizes: np.ndarray
    ones: np.ndarray
    in_blocks: np.ndarray
    column_noise: np.ndarray
    cluster_noise: np.ndarray

    @property
    def signal(self) -> np.ndarray:
        """``S_n = sum |c|``: labels in clusters (every diagonal label is in one)."""
        return self.sizes.sum(-1)

    @property
    def noise(self) -> np.ndarray:
        """``noise_n = ones(B_n) - sum |c|^2``: above-threshold elements outside cluster blocks."""
        return self.ones - self.in_blocks

    @property
    def n_clusters(self) -> np.ndarray:
        """Number of clusters (size-1 clusters count)."""
        return (self.sizes > 0).sum(-1)


def _square(binary: np.ndarray) -> np.ndarray:
    binary = np.asarray(binary, dtype=bool)
    if binary.ndim < 2 or binary.shape[-1] != binary.shape[-2]:
        raise ValueError(f"expected square matrices [..., L, L], got shape {binary.shape}")
    return binary


def _groups(counts: np.ndarray) -> Iterator[np.ndarray]:
    """Node indices sorted by diagonal count, cut into groups of at most ``GROUP_ELEMENTS``."""
    order = np.argsort(counts, kind="stable")
    order = order[counts[order] > 0]
    start = 0
    while start < order.size:
        stop = start + 1
        while stop < order.size and (stop + 1 - start) * int(counts[order[stop]]) ** 2 <= (
            GROUP_ELEMENTS
        ):
            stop += 1
        yield order[start:stop]
        start = stop


def _greedy_positions(mutual: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Cluster index of each diagonal position ``(g, d)`` of nodes sorted by ``counts``.

    ``mutual[i, p, q]``: ones both ways between node ``i``'s ``p``-th and ``q``-th diagonal
    labels; positions ``>= counts[i]`` are padding (-1 out).
    """
    n_nodes, width = mutual.shape[:2]
    # compat[i, k, q]: position q has ones both ways with every member of node i's cluster k.
    compat = np.ones((n_nodes, width, width), dtype=bool)
    made = np.zeros(n_nodes, dtype=np.int64)
    cluster = np.full((n_nodes, width), -1, dtype=np.int64)
    for pos in range(width):
        first = int(np.searchsorted(counts, pos, side="right"))  # counts ascending
        rows = np.arange(first, n_nodes)
        existing = int(made[first:].max())
        if existing:
            accepts = compat[first:, :existing, pos] & (np.arange(existing) < made[first:, None])
            joins = accepts.any(axis=1)
            target = np.where(joins, accepts.argmax(axis=1), made[first:])
        else:
            joins = np.zeros(n_nodes - first, dtype=bool)
            target = made[first:].copy()
        compat[rows, target, pos + 1 :] &= mutual[first:, pos, pos + 1 :]
        made[first:] += ~joins
        cluster[first:, pos] = target
    return cluster


def clusters_of(diagonal: np.ndarray, mutual: MutualGather) -> np.ndarray:
    """Cluster index of every label ``(N, L)`` (-1 off the diagonal) from ``diagonal (N, L)``.

    ``mutual`` gathers the mutual-ones submatrices of a group of nodes at their diagonal labels,
    so the caller decides where the matrices live (boolean array, float chunks to binarise).
    """
    n_nodes, n_labels = diagonal.shape
    counts = diagonal.sum(-1)
    cluster = np.full((n_nodes, n_labels), -1, dtype=np.int64)
    for nodes in _groups(counts):
        group_counts = counts[nodes]
        width = int(group_counts[-1])
        # Each node's diagonal labels first, ascending (then off-diagonal ones: padding).
        labels = np.argsort(~diagonal[nodes], axis=1, kind="stable")[:, :width]
        found = _greedy_positions(mutual(nodes, labels), group_counts)
        real = np.arange(width) < group_counts[:, None]
        cluster[np.broadcast_to(nodes[:, None], labels.shape)[real], labels[real]] = found[real]
    return cluster


def _boolean_gather(flat: np.ndarray) -> MutualGather:
    def gather(nodes: np.ndarray, labels: np.ndarray) -> np.ndarray:
        sub = flat[nodes[:, None, None], labels[:, :, None], labels[:, None, :]]
        return sub & sub.transpose(0, 2, 1)

    return gather


def greedy_clusters(binary: np.ndarray) -> np.ndarray:
    """Cluster index of every label (``-1`` off the diagonal) for boolean ``binary[..., L, L]``."""
    binary = _square(binary)
    batch, n_labels = binary.shape[:-2], binary.shape[-1]
    flat = binary.reshape(-1, n_labels, n_labels)
    diagonal = np.diagonal(flat, axis1=1, axis2=2)
    return clusters_of(diagonal, _boolean_gather(flat)).reshape(*batch, n_labels)


def node_summary(
    diagonal: np.ndarray, cluster: np.ndarray, column_ones: np.ndarray
) -> NodeClusters:
    """:class:`NodeClusters` of ``(N, L)`` nodes from their diagonal, clusters and column ones."""
    n_nodes, n_labels = cluster.shape
    member = cluster >= 0
    own = np.where(member, cluster, 0)
    index = (np.arange(n_nodes)[:, None] * n_labels + own)[member]
    sizes = np.bincount(index, minlength=n_nodes * n_labels).reshape(n_nodes, n_labels)
    own_size = np.where(member, np.take_along_axis(sizes, own, axis=1), 0)
    column_ones = np.asarray(column_ones, dtype=np.int64)
    column_noise = column_ones - own_size
    cluster_noise = np.bincount(
        index, weights=column_noise[member], minlength=n_nodes * n_labels
    ).reshape(n_nodes, n_labels)
    return NodeClusters(
        diagonal=np.asarray(diagonal, dtype=bool),
        cluster=cluster,
        sizes=sizes,
        ones=column_ones.sum(-1),
        in_blocks=(sizes * sizes).sum(-1),
        column_noise=column_noise,
        cluster_noise=cluster_noise.astype(np.int64),
    )


def node_clusters(binary: np.ndarray) -> NodeClusters:
    """Clusters, signal and noise of every node of boolean ``binary[..., L, L]`` at once."""
    binary = _square(binary)
    batch, n_labels = binary.shape[:-2], binary.shape[-1]
    flat = binary.reshape(-1, n_labels, n_labels)
    diagonal = np.diagonal(flat, axis1=1, axis2=2)
    cluster = clusters_of(diagonal, _boolean_gather(flat))
    summary = node_summary(diagonal, cluster, flat.sum(axis=1))
    return NodeClusters(
        **{name: value.reshape(batch + value.shape[1:]) for name, value in vars(summary).items()}
    )
