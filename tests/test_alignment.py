"""Superclass alignment of node groupings: brute force, the null's expectation, planted truth."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import xarray as xr

from statmech_nn.errors import ConfigError
from statmech_nn.order import alignment
from statmech_nn.order.clusters import node_clusters


def literal_purity(cluster: np.ndarray, superclass: np.ndarray, by: str) -> float:
    """Loop over nodes and ordered label pairs, as the definition reads."""
    same = total = 0
    for row in cluster:
        for a, b in itertools.permutations(range(row.size), 2):
            grouped = row[a] >= 0 and row[b] >= 0 and (by == "node" or row[a] == row[b])
            if grouped:
                total += 1
                same += superclass[a] == superclass[b]
    return same / total if total else float("nan")


def random_binary(rng, nodes: int, labels: int, p: float = 0.2) -> np.ndarray:
    binary = rng.random((nodes, labels, labels)) < p
    binary |= binary.transpose(0, 2, 1) & (rng.random((nodes, labels, labels)) < 0.5)
    return binary


def stats_of(binary_layers: list[np.ndarray]) -> xr.Dataset:
    ncs = [node_clusters(b) for b in binary_layers]
    return xr.Dataset(
        {
            "cluster": (("layer", "node", "label"), np.stack([nc.cluster for nc in ncs])),
            "diagonal": (("layer", "node", "label"), np.stack([nc.diagonal for nc in ncs])),
        },
        coords={"layer": np.arange(len(ncs))},
    )


def test_pair_purity_matches_a_literal_loop():
    rng = np.random.default_rng(3)
    superclass = np.repeat(np.arange(4), 3)
    nc = node_clusters(random_binary(rng, 9, 12))
    for by, pairs in (
        ("cluster", alignment.cluster_pairs(nc.cluster)),
        ("node", alignment.recognised_pairs(nc.diagonal)),
    ):
        assert alignment.pair_purity(pairs, superclass) == pytest.approx(
            literal_purity(nc.cluster, superclass, by)
        )
    assert (
        alignment.cluster_pairs(nc.cluster).sum() <= alignment.recognised_pairs(nc.diagonal).sum()
    )


def test_the_null_mean_is_the_chance_fraction():
    rng = np.random.default_rng(0)
    superclass = np.repeat(np.arange(5), 4)
    pairs = alignment.recognised_pairs(rng.random((30, 20)) < 0.3)
    null = alignment.purity_null(pairs, superclass, 4000, seed=1)
    assert alignment.chance_purity(superclass) == pytest.approx(5 * 4 * 3 / (20 * 19))
    assert null.mean() == pytest.approx(alignment.chance_purity(superclass), abs=0.01)


def test_planted_superclass_clusters_are_found_and_random_ones_are_not():
    superclass = np.repeat(np.arange(5), 4)
    planted = np.zeros((10, 20, 20), dtype=bool)
    for node in range(10):
        s = node % 5
        planted[node, 4 * s : 4 * s + 4, 4 * s : 4 * s + 4] = True
    rng = np.random.default_rng(5)
    ds = alignment.superclass_alignment(
        stats_of([planted, random_binary(rng, 10, 20)]), superclass, permutations=200
    )
    assert ds["cluster_purity"].values[0] == 1.0
    assert ds["cluster_pvalue"].values[0] == pytest.approx(1 / 201)
    assert ds["cluster_pvalue"].values[1] > 0.01
    assert ds["node_null_mean"].values[1] == pytest.approx(ds.attrs["chance"], abs=0.03)
    assert ds["cluster_null"].dims == ("layer", "permutation")


def test_renaming_superclasses_changes_nothing():
    rng = np.random.default_rng(2)
    stats = stats_of([random_binary(rng, 8, 12)])
    superclass = np.repeat(np.arange(3), 4)
    renamed = np.array([2, 0, 1])[superclass]
    a = alignment.superclass_alignment(stats, superclass, permutations=50)
    b = alignment.superclass_alignment(stats, renamed, permutations=50)
    assert float(a["node_purity"][0]) == float(b["node_purity"][0])


def test_bad_maps_are_refused():
    stats = stats_of([np.eye(6, dtype=bool)[None].repeat(2, 0)])
    with pytest.raises(ConfigError, match="6 labels"):
        alignment.superclass_alignment(stats, [0, 1], permutations=10)
    with pytest.raises(ConfigError, match=r"labels \[5\] have no superclass"):
        alignment.superclass_alignment(stats, [0, 0, 0, 1, 1, -1], permutations=10)
    with pytest.raises(ConfigError, match="two superclasses"):
        alignment.superclass_alignment(stats, [0] * 6, permutations=10)
