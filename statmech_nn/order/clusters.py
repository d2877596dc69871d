"""Per-node clusters, signal and noise of binarised single-node matrices (METHODS.md section 5).

Pure numpy on boolean arrays ``B[..., label_true, label_out]``; every leading axis is a batch of
nodes. The greedy cluster rule is run as one ascending pass over the labels, each label offered to
the node's existing clusters in creation order: that is the rule of METHODS.md (seed = first
unassigned diagonal label, grow it over the later labels, repeat) because a cluster's membership
among labels below ``l`` never depends on what later clusters do. The loop is over labels only;
every step is a boolean tensor operation across all nodes at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


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


def greedy_clusters(binary: np.ndarray) -> np.ndarray:
    """Cluster index of every label (``-1`` off the diagonal) for boolean ``binary[..., L, L]``."""
    binary = np.asarray(binary, dtype=bool)
    if binary.ndim < 2 or binary.shape[-1] != binary.shape[-2]:
        raise ValueError(f"expected square matrices [..., L, L], got shape {binary.shape}")
    batch, n_labels = binary.shape[:-2], binary.shape[-1]
    flat = binary.reshape(-1, n_labels, n_labels)
    n_nodes = flat.shape[0]
    mutual = flat & flat.transpose(0, 2, 1)
    diagonal = np.diagonal(flat, axis1=1, axis2=2)
    # compat[n, k, j]: label j has ones both ways with every member of node n's cluster k.
    compat = np.ones((n_nodes, n_labels, n_labels), dtype=bool)
    exists = np.zeros((n_nodes, n_labels), dtype=bool)
    count = np.zeros(n_nodes, dtype=np.int64)
    cluster = np.full((n_nodes, n_labels), -1, dtype=np.int64)
    for label in range(n_labels):
        accepts = compat[:, :, label] & exists
        joins = accepts.any(axis=1)
        rows = np.flatnonzero(diagonal[:, label])
        if rows.size == 0:
            continue
        target = np.where(joins[rows], accepts[rows].argmax(axis=1), count[rows])
        compat[rows, target, :] &= mutual[rows, label, :]
        exists[rows, target] = True
        count[rows] += ~joins[rows]
        cluster[rows, label] = target
    return cluster.reshape(*batch, n_labels)


def node_clusters(binary: np.ndarray) -> NodeClusters:
    """Clusters, signal and noise of every node of boolean ``binary[..., L, L]`` at once."""
    binary = np.asarray(binary, dtype=bool)
    cluster = greedy_clusters(binary)
    batch, n_labels = binary.shape[:-2], binary.shape[-1]
    flat_b = binary.reshape(-1, n_labels, n_labels)
    flat_c = cluster.reshape(-1, n_labels)
    n_nodes = flat_b.shape[0]
    same = (flat_c[:, :, None] == flat_c[:, None, :]) & (flat_c[:, :, None] >= 0)
    off_block = flat_b & ~same
    column_noise = off_block.sum(axis=1)
    member = flat_c >= 0
    index = (np.arange(n_nodes)[:, None] * n_labels + np.where(member, flat_c, 0))[member]
    sizes = np.bincount(index, minlength=n_nodes * n_labels).reshape(n_nodes, n_labels)
    cluster_noise = np.bincount(
        index, weights=column_noise[member], minlength=n_nodes * n_labels
    ).reshape(n_nodes, n_labels)
    return NodeClusters(
        diagonal=np.diagonal(flat_b, axis1=1, axis2=2).reshape(*batch, n_labels),
        cluster=cluster,
        sizes=sizes.reshape(*batch, n_labels),
        ones=flat_b.sum(axis=(1, 2)).reshape(batch),
        in_blocks=same.sum(axis=(1, 2)).reshape(batch),
        column_noise=column_noise.reshape(*batch, n_labels),
        cluster_noise=cluster_noise.astype(np.int64).reshape(*batch, n_labels),
    )
