"""Node cooperation (subset curve) and the single-node bound (hull / LP), methods section 11."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from statmech_nn import cooperation as coop
from statmech_nn import cooperation_store as store
from statmech_nn.cooperation_bound import output_labels, scalar_output_labels, vector_output_labels
from statmech_nn.errors import ConfigError
from statmech_nn.naming import LAYERED_METRIC
from statmech_nn.readout import ReadoutConfig, make_readout


def brute_force(w, bias=None, domain="real", samples=200_000, seed=0, radii=(1.0,)):
    """Labels that are the strict argmax of ``w x + b`` for some sampled input ``x``."""
    rng = np.random.default_rng(seed)
    w = np.asarray(w, dtype=np.float64)
    x = rng.standard_normal((samples, w.shape[1]))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    if domain == "nonnegative":
        x = np.abs(x)
    x = np.concatenate([r * x for r in radii])
    fields = x @ w.T + (0 if bias is None else bias)
    top = np.sort(fields, axis=1)
    strict = top[:, -1] > top[:, -2]
    won = np.zeros(w.shape[0], dtype=bool)
    won[fields.argmax(1)[strict]] = True
    return won


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("dims", [2, 3])
def test_the_hull_test_matches_dense_sampling(seed, dims):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((7, dims))
    w = np.vstack([w, w[:3].mean(0), 10 * w[0]])  # an interior point and a far vertex
    got = vector_output_labels(w)
    assert np.array_equal(got, brute_force(w, samples=400_000 if dims == 3 else 100_000))
    assert not got[7] and got[8]


@pytest.mark.parametrize("seed", range(3))
def test_the_hull_test_on_nonnegative_inputs_and_with_a_bias(seed):
    rng = np.random.default_rng(10 + seed)
    w = rng.standard_normal((8, 2))
    cone = vector_output_labels(w, domain="nonnegative")
    assert np.array_equal(cone, brute_force(w, domain="nonnegative"))
    assert cone.sum() <= vector_output_labels(w).sum()
    b = rng.standard_normal(8)
    radii = np.geomspace(1e-3, 1e3, 25)
    got = vector_output_labels(w, bias=b)
    assert np.array_equal(got, brute_force(w, b, samples=20_000, radii=radii))


def test_a_scalar_input_without_bias_gives_the_largest_and_smallest_weight():
    rng = np.random.default_rng(3)
    for _ in range(20):
        w = rng.standard_normal(9)
        got = scalar_output_labels(w)
        assert got.sum() == 2 and got[w.argmax()] and got[w.argmin()]
        z = np.linspace(-5, 5, 2001)[:, None]
        assert np.array_equal(got, brute_force(w[:, None], samples=10) | _grid(w, z))
        assert np.array_equal(got, vector_output_labels(w[:, None]))
        positive = scalar_output_labels(w, domain="nonnegative")
        assert positive.sum() == 1 and positive[w.argmax()]
    assert scalar_output_labels(np.array([1.0, 1.0, -2.0])).tolist() == [False, False, True]


def _grid(w, z, b=0.0):
    fields = z * w[None, :] + b
    top = np.sort(fields, axis=1)
    won = np.zeros(len(w), dtype=bool)
    won[fields.argmax(1)[top[:, -1] > top[:, -2]]] = True
    return won


@pytest.mark.parametrize("seed", range(5))
def test_a_scalar_input_with_bias_is_the_upper_envelope(seed):
    rng = np.random.default_rng(20 + seed)
    w, b = rng.standard_normal(12), rng.standard_normal(12)
    z = np.concatenate([-np.geomspace(1e4, 1e-4, 4000), np.geomspace(1e-4, 1e4, 4000)])[:, None]
    got = scalar_output_labels(w, b)
    assert np.array_equal(got, _grid(w, z, b))
    assert np.array_equal(got, vector_output_labels(w[:, None], bias=b))
    positive = scalar_output_labels(w, b, domain="nonnegative")
    assert np.array_equal(positive, _grid(w, np.abs(z), b))


def test_output_labels_per_node_and_bad_domains():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((5, 4, 3))  # W[j, n, t]
    per_node = output_labels(w)
    assert per_node.shape == (4, 5)
    for n in range(4):
        assert np.array_equal(per_node[n], vector_output_labels(w[:, n, :]))
    assert (output_labels(w[:, :, 0]).sum(1) == 2).all()
    with pytest.raises(ConfigError):
        output_labels(w, domain="positive")


# The subset curve on synthetic features where the answer is known.

LABELS, NODES = 4, 8


def one_label_nodes(samples, seed, tokens=None):
    """Node ``n`` fires (about 1) only for samples of label ``n mod 4``: no cooperation."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(samples) % LABELS
    code = (y[:, None] == torch.arange(NODES)[None, :] % LABELS).float()
    x = code * (1 + 0.2 * torch.randn(samples, NODES, generator=gen))
    x += 0.05 * torch.randn(samples, NODES, generator=gen)
    if tokens:
        x = x[:, None, :] + 0.1 * torch.randn(samples, tokens, NODES, generator=gen)
    return coop.SiteFeatures(x, y)


CONFIG = ReadoutConfig(epochs=15, lr=0.2, batch_size=32)


def full_site_labels(train, test):
    readout = coop.fit_readout(train, LABELS, CONFIG)
    matrices = coop.single_node_matrices(readout, test, LABELS)
    return readout, matrices, coop.single_node_labels(matrices, 0.3)


def test_single_node_matrices_equal_literal_silencing():
    train, test = one_label_nodes(128, 0), one_label_nodes(64, 1)
    readout, matrices, labels = full_site_labels(train, test)
    for n in range(NODES):
        silenced = test.x.clone()
        silenced[:, [m for m in range(NODES) if m != n]] = 0
        literal = coop.class_means(readout(silenced), test.labels, LABELS)
        torch.testing.assert_close(matrices[n], literal)
    total = coop.class_means(readout(test.x), test.labels, LABELS)
    torch.testing.assert_close(matrices.sum(0), total)
    expected = np.zeros((NODES, LABELS), dtype=bool)
    expected[np.arange(NODES), np.arange(NODES) % LABELS] = True
    assert np.array_equal(labels, expected)


@pytest.mark.slow  # trains readouts on node subsets, twice
def test_the_subset_curve_rises_and_finds_no_cooperation_where_there_is_none():
    train, test = one_label_nodes(128, 0), one_label_nodes(64, 1)
    _, _, single = full_site_labels(train, test)
    ds = coop.subset_curve(train, test, LABELS, single, draws=4, seed=0, config=CONFIG)
    assert ds["size"].values.tolist() == [1, 2, 4, 8]
    acc = ds["accuracy"].mean("draw").values
    assert (np.diff(acc) > 0).all() and acc[0] < 0.6 and acc[-1] > 0.95
    assert ds.attrs["chance"] == 0.25
    assert (ds["recognised"] == ds["union"]).all()
    assert (ds["cooperation"] == 0).all() and (ds["new_labels"] == 0).all()
    for si, size in enumerate(ds["size"].values):
        nodes = ds["nodes"].values[si]
        assert (nodes[:, :size] >= 0).all() and (nodes[:, size:] == -1).all()
        distinct = {n % LABELS for n in nodes[0, :size]}
        assert int(ds["union_labels"].values[si, 0]) == len(distinct)
    again = coop.subset_curve(train, test, LABELS, single, draws=4, seed=0, config=CONFIG)
    assert np.array_equal(again["accuracy"].values, ds["accuracy"].values)


def test_labels_without_test_samples_are_refused():
    with pytest.raises(ConfigError, match=r"labels \[2\]"):
        coop.class_means(torch.ones(3, 2), torch.tensor([0, 1, 3]), 4)


def test_subsets_within_one_head():
    heads = np.repeat(np.arange(4), 2)
    subsets = coop.draw_subsets(NODES, 2, 20, seed=1, heads=heads)
    assert all(len(set(heads[row])) == 1 for row in subsets)
    assert len({tuple(row) for row in subsets}) > 1
    with pytest.raises(ConfigError):
        coop.draw_subsets(NODES, 3, 2, seed=0, heads=heads)


def test_token_features_with_padding_give_the_same_curve():
    train, test = one_label_nodes(96, 0, tokens=5), one_label_nodes(48, 1, tokens=5)
    mask_train = torch.ones(96, 5, dtype=torch.bool)
    mask_test = torch.ones(48, 5, dtype=torch.bool)
    config = ReadoutConfig(readout="mean", epochs=10, lr=0.2, batch_size=32)
    single = np.zeros((NODES, LABELS), dtype=bool)
    base = coop.subset_curve(
        coop.SiteFeatures(train.x, train.labels, mask_train),
        coop.SiteFeatures(test.x, test.labels, mask_test),
        LABELS,
        single,
        sizes=[2, 8],
        draws=2,
        config=config,
    )

    def padded(f, mask):
        garbage = 50 * torch.randn(len(f.labels), 3, NODES)
        pad = torch.zeros(len(f.labels), 3, dtype=torch.bool)
        return coop.SiteFeatures(torch.cat([f.x, garbage], 1), f.labels, torch.cat([mask, pad], 1))

    other = coop.subset_curve(
        padded(train, mask_train),
        padded(test, mask_test),
        LABELS,
        single,
        sizes=[2, 8],
        draws=2,
        config=config,
    )
    np.testing.assert_allclose(other["accuracy"], base["accuracy"], atol=1 / 48 + 1e-9)
    assert (other["recognised"] == base["recognised"]).all()


def test_a_flatten_readout_on_token_features():
    train, test = one_label_nodes(96, 0, tokens=3), one_label_nodes(48, 1, tokens=3)
    config = ReadoutConfig(readout="flatten", epochs=10, lr=0.1, batch_size=32)
    readout = coop.fit_readout(train, LABELS, config)
    matrices = coop.single_node_matrices(readout, test, LABELS)
    total = coop.class_means(readout(test.x), test.labels, LABELS)
    torch.testing.assert_close(matrices.sum(0), total)
    flat = make_readout("flatten", 3, NODES, LABELS)
    assert readout.weight_jnt().shape == flat.weight_jnt().shape


def test_the_stored_result_and_its_metric_names(tmp_path):
    train, test = one_label_nodes(64, 0), one_label_nodes(32, 1)
    readout, _, single = full_site_labels(train, test)
    weight = readout.weight.numpy()
    per_layer = {}
    for layer in (0, 1):
        curve = coop.subset_curve(train, test, LABELS, single, sizes=[1, 8], draws=2, config=CONFIG)
        per_layer[layer] = store.site_result(curve, store.bound_dataset(weight, single))
    ds = store.stack_layers(per_layer, "ff", label_names=list("abcd"))
    for name, var in ds.variables.items():
        assert len(set(var.dims)) == len(var.dims), name
    assert ds["output_labels"].dims == ("layer", "node")
    assert (ds["output_labels"] <= 2).all()  # scalar inputs, no bias
    assert (ds["diagonal_labels"] == 1).all()
    names = store.metrics(ds)
    assert names["coop.chance"] == 0.25
    assert "coop.acc.ff.n8.block1" in names and "bound.labels.ff.block0" in names
    for name in names:
        assert name == "coop.chance" or LAYERED_METRIC.match(name), name
    store.save(ds, tmp_path / "coop.nc")
    back = store.load(tmp_path / "coop.nc")
    assert back["can_output"].dtype == bool
    assert np.array_equal(back["accuracy"].values, ds["accuracy"].values)
    assert back.attrs["kind"] == "ff"
