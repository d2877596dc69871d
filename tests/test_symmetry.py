"""Head symmetry breaking: constructed cases, a pure-Python Q, and the permutation null model."""

from __future__ import annotations

import math

import numpy as np
import pytest
import xarray as xr

from statmech_nn import order
from statmech_nn.errors import SchemaError
from statmech_nn.naming import exceeds
from statmech_nn.order import symmetry as symmetry_module


def mha_dataset(diagonal: np.ndarray, head: np.ndarray, head_diag: np.ndarray | None = None):
    """An SNP dataset whose ``mha`` nodes have the diagonal labels ``diagonal[layer, node, label]``.

    Off-diagonal elements sit below threshold, so only the diagonal matters.
    """
    layers, nodes, labels = diagonal.shape
    m = np.full((layers, nodes, labels, labels), 0.1, dtype=np.float32)
    idx = np.arange(labels)
    m[..., idx, idx] = np.where(diagonal, 0.9, 0.2)
    ds = xr.Dataset(
        {"snp_mha": (("layer", "node", "label_true", "label_out"), m)},
        coords={
            "layer": np.arange(layers),
            "node": np.arange(nodes),
            "head": ("node", head),
            "label_true": idx,
            "label_out": idx,
        },
    )
    if head_diag is not None:
        hm = np.full((layers, head_diag.shape[1], labels, labels), 0.1, dtype=np.float32)
        hm[..., idx, idx] = np.where(head_diag, 1.0, 0.0)
        ds["head_snp_mha"] = (("layer", "head", "label_true", "label_out"), hm)
    return ds


def ref_q(diag: np.ndarray, head: np.ndarray, n_heads: int) -> float:
    labels = diag.shape[1]
    entropies = []
    for label in range(labels):
        counts = [
            sum(bool(diag[n, label]) for n in range(len(head)) if head[n] == h)
            for h in range(n_heads)
        ]
        total = sum(counts)
        if total == 0:
            continue
        entropies.append(-sum(c / total * math.log(c / total) for c in counts if c))
    return 1 - sum(entropies) / len(entropies) / math.log(n_heads)


def test_identical_heads_give_zero():
    rng = np.random.default_rng(0)
    per_head = rng.random((1, 6, 10)) < 0.4
    per_head[0, 0, 0] = True
    diagonal = np.tile(per_head, (1, 4, 1))  # 4 heads, each with the same 6 nodes
    head = np.repeat(np.arange(4), 6)
    sym = order.head_symmetry(mha_dataset(diagonal, head), permutations=200)
    np.testing.assert_allclose(sym["Q"], 0.0, atol=1e-12)
    assert sym["owned_fraction"].item() == 0.0
    assert (sym["labels_per_head"] == sym["labels_per_head"][0, 0]).all()


def test_perfectly_split_heads_give_one():
    heads, per_head, labels = 4, 5, 12
    head = np.repeat(np.arange(heads), per_head)
    owner = np.arange(labels) % heads
    rng = np.random.default_rng(1)
    diagonal = (owner[None, :] == head[:, None]) & (rng.random((heads * per_head, labels)) < 0.7)
    diagonal[np.arange(labels) % (heads * per_head), np.arange(labels)] = False
    for label in range(labels):
        diagonal[owner[label] * per_head, label] = True
    sym = order.head_symmetry(mha_dataset(diagonal[None], head), permutations=300, seed=3)
    np.testing.assert_allclose(sym["Q"], 1.0)
    assert sym["owned_fraction"].item() == 1.0
    assert sym["Q_null_mean"].item() < 0.6
    assert sym["Q_pvalue"].item() == pytest.approx(1 / 301)
    assert sym["Q_z"].item() > 3
    np.testing.assert_allclose(sym["jaccard_expertise"], 0.0)


def test_q_and_expertise_agree_with_reference():
    rng = np.random.default_rng(2)
    diagonal = rng.random((3, 16, 9)) < 0.25
    head = rng.permutation(np.repeat(np.arange(4), 4))
    sym = order.head_symmetry(mha_dataset(diagonal, head), permutations=50)
    for layer in range(3):
        np.testing.assert_allclose(sym["Q"][layer], ref_q(diagonal[layer], head, 4))
        for h in range(4):
            for label in range(9):
                expected = int(diagonal[layer, head == h, label].sum())
                assert int(sym["counts"][layer, h, label]) == expected
        owners = [
            {h for h in range(4) if diagonal[layer, head == h, label].any()} for label in range(9)
        ]
        recognised = [o for o in owners if o]
        assert float(sym["owned_fraction"][layer]) == pytest.approx(
            sum(len(o) == 1 for o in recognised) / len(recognised)
        )
    assert sym["Q_null"].dims == ("layer", "permutation")


def test_random_assignment_sits_inside_its_null():
    rng = np.random.default_rng(4)
    pvalues = []
    for _ in range(12):
        diagonal = rng.random((1, 32, 10)) < 0.3
        head = rng.permutation(np.repeat(np.arange(4), 8))
        sym = order.head_symmetry(mha_dataset(diagonal, head), permutations=199, seed=5)
        pvalues.append(sym["Q_pvalue"].item())
        null = sym["Q_null"].values[0]
        assert null.min() <= sym["Q"].item() <= null.max() or sym["Q_pvalue"].item() > 0.01
    assert min(pvalues) > 0.005
    assert 0.2 < np.mean(pvalues) < 0.8


def test_null_keeps_head_sizes_and_is_seeded():
    head = np.repeat(np.arange(3), [2, 5, 9])
    perms = order.permuted_heads(head, 100, np.random.default_rng(0))
    assert perms.shape == (100, 16)
    for row in perms:
        assert list(np.bincount(row, minlength=3)) == [2, 5, 9]
    assert len({tuple(r) for r in perms}) > 50
    diagonal = np.random.default_rng(1).random((2, 16, 6)) < 0.4
    a = order.null_distribution(diagonal, head, 3, 40, seed=7)
    b = order.null_distribution(diagonal, head, 3, 40, seed=7)
    c = order.null_distribution(diagonal, head, 3, 40, seed=8)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    ref = [
        ref_q(diagonal[0], p, 3) for p in order.permuted_heads(head, 5, np.random.default_rng(9))
    ]
    np.testing.assert_allclose(order.null_distribution(diagonal[:1], head, 3, 5, seed=9)[0], ref)


def test_pvalue_counts_ties_and_exceedances():
    rng = np.random.default_rng(6)
    diagonal = rng.random((1, 12, 8)) < 0.3
    head = np.repeat(np.arange(3), 4)
    sym = order.head_symmetry(mha_dataset(diagonal, head), permutations=99, seed=2)
    null = sym["Q_null"].values[0]
    q = sym["Q"].item()
    assert sym["Q_pvalue"].item() == pytest.approx((1 + np.sum(null >= q - 1e-12)) / 100)
    np.testing.assert_allclose(sym["Q_null_mean"], null.mean())
    np.testing.assert_allclose(sym["Q_null_std"], null.std(ddof=1))
    np.testing.assert_allclose(sym["Q_z"], (q - null.mean()) / null.std(ddof=1))


def test_single_head_jaccard():
    head_diag = np.zeros((1, 4, 3), dtype=bool)
    head_diag[0, 0, [0, 1]] = True
    head_diag[0, 1, [1, 2]] = True
    diagonal = np.zeros((1, 8, 3), dtype=bool)
    diagonal[0, 0, 0] = True
    sym = order.head_symmetry(
        mha_dataset(diagonal, np.repeat(np.arange(4), 2), head_diag), permutations=10
    )
    assert list(sym["head_labels"][0]) == [2, 2, 0, 0]
    # pairs with a non-empty union: (0,1) -> 1/3, (0,2), (0,3), (1,2), (1,3) -> 0
    np.testing.assert_allclose(sym["jaccard"], 1 / 15)


def test_needs_heads():
    ds = mha_dataset(np.zeros((1, 4, 3), dtype=bool), np.zeros(4, dtype=int)).drop_vars("head")
    with pytest.raises(SchemaError, match="head"):
        order.head_symmetry(ds)


def oracle_recognised(matrices: xr.DataArray, theta: float) -> np.ndarray:
    """Slow literal diagonals: the whole tensor binarised (``naming.exceeds``), then diagonals,
    masked with the real nodes (not all NaN) as before issue 11."""
    values = matrices.values
    diagonal = np.diagonal(exceeds(values, theta), axis1=-2, axis2=-1)
    return diagonal & ~np.isnan(values).all(axis=(-2, -1))[..., None]


@pytest.mark.parametrize("theta", [0.3, 0.1, 0.55, 0.9])
def test_diagonal_only_binarisation_matches_the_full_oracle(monkeypatch, theta):
    """Ties at float32(theta), NaN padding, an all-NaN diagonal: same as binarising everything."""
    rng = np.random.default_rng(7)
    layers, nodes, labels = 3, 12, 9
    head = np.repeat(np.arange(4), 3)
    ds = mha_dataset(rng.random((layers, nodes, labels)) < 0.3, head, rng.random((3, 4, 9)) < 0.4)
    for name in ("snp_mha", "head_snp_mha"):
        values = ds[name].values
        values[...] = rng.uniform(-1, 1, values.shape).astype(np.float32)
        values[rng.random(values.shape) < 0.2] = np.float32(theta)
        values[rng.random(values.shape) < 0.1] = np.nextafter(np.float32(theta), np.float32(1))
    m = ds["snp_mha"].values
    m[0, -2:] = np.nan  # padding
    m[1, 0, np.arange(labels), np.arange(labels)] = np.nan  # a real node with a NaN diagonal
    got = order.head_symmetry(ds, theta, permutations=40, seed=1)
    monkeypatch.setattr(symmetry_module, "_recognised", oracle_recognised)
    want = order.head_symmetry(ds, theta, permutations=40, seed=1)
    xr.testing.assert_identical(got, want)
    assert got["counts"].sum() > 0 and (got["head_labels"] > 0).any()
