"""ANDC masks, random control, masked-readout evaluation and network-level masks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr

from statmech_nn import pruning
from statmech_nn.errors import SchemaError
from statmech_nn.pruning import (
    FeatureCache,
    ThresholdError,
    andc_mask,
    expand_mask,
    pruned_fraction,
    random_mask,
    site_features,
)


def make_snp(layers=2, nodes=6, labels=5, seed=0, pad_last=0) -> xr.Dataset:
    """An SNP dataset following docs/architecture.md, with random normalised matrices."""
    rng = np.random.default_rng(seed)
    m = rng.uniform(-0.2, 1.0, (layers, nodes, labels, labels)).astype(np.float32)
    m /= m.reshape(layers, nodes, -1).max(-1)[..., None, None]
    if pad_last:
        m[-1, nodes - pad_last :] = np.nan
    hidden = rng.uniform(-0.2, 1.0, (layers, 2 * nodes, labels, labels)).astype(np.float32)
    hidden /= hidden.reshape(layers, 2 * nodes, -1).max(-1)[..., None, None]
    dims = ("layer", "node", "label_true", "label_out")
    return xr.Dataset(
        {
            "snp_ff": (dims, m),
            "snp_ff_hidden": (("layer", "node_ff_hidden", "label_true", "label_out"), hidden),
        },
        coords={
            "layer": np.arange(layers),
            "node": np.arange(nodes),
            "node_ff_hidden": np.arange(2 * nodes),
            "label_true": np.arange(labels),
            "label_out": np.arange(labels),
        },
        attrs={"schema": "statmech-nn.snp/1"},
    )


def literal_clusters(b: np.ndarray) -> list[list[int]]:
    """docs/methods.md section 5, literally: seeds in ascending order, grow over later labels."""
    diag = [l for l in range(b.shape[0]) if b[l, l]]
    unassigned = list(diag)
    clusters = []
    while unassigned:
        cluster = [unassigned.pop(0)]
        for l in list(unassigned):
            if all(b[l, c] and b[c, l] for c in cluster):
                cluster.append(l)
                unassigned.remove(l)
        clusters.append(cluster)
    return clusters


def test_diagonal_mask_matches_hand_rule():
    ds = make_snp()
    theta = 0.4
    mask = andc_mask(ds, theta)
    assert mask.dims == ("layer", "node", "label_out") and mask.dtype == bool
    m = ds["snp_ff"].values
    for layer in range(m.shape[0]):
        for n in range(m.shape[1]):
            for j in range(m.shape[2]):
                assert bool(mask.values[layer, n, j]) == bool(m[layer, n, j, j] > theta)


def test_per_layer_thresholds_and_strictness():
    ds = make_snp()
    m = ds["snp_ff"].values
    exact = float(m[1, 0, 2, 2])
    mask = andc_mask(ds, {0: 0.2, 1: exact})
    assert not mask.values[1, 0, 2]  # strict: equal to theta is cut
    assert (mask.values[0] == (np.diagonal(m[0], axis1=1, axis2=2) > 0.2)).all()
    assert mask.attrs["theta"] == [0.2, pytest.approx(exact)]


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.1, 1.5, float("nan"), "x"])
def test_theta_outside_unit_interval_is_a_clear_error(bad):
    with pytest.raises(ThresholdError, match="threshold"):
        andc_mask(make_snp(), bad)


def test_missing_layer_threshold_is_a_clear_error():
    with pytest.raises(ThresholdError, match="layers"):
        andc_mask(make_snp(), {0: 0.3})


def test_cluster_variant_against_literal_clusters():
    ds = make_snp(layers=1, nodes=12, labels=7, seed=3)
    theta = 0.35
    b = ds["snp_ff"].values > theta
    # size-1 clusters count, so every diagonal label is in a cluster: cluster == diagonal
    assert (andc_mask(ds, theta, variant="cluster").values == andc_mask(ds, theta).values).all()
    mask2 = andc_mask(ds, theta, variant="cluster", min_cluster_size=2).values
    for n in range(b.shape[1]):
        expected = np.zeros(b.shape[-1], dtype=bool)
        for cluster in literal_clusters(b[0, n]):
            if len(cluster) >= 2:
                expected[cluster] = True
        assert (mask2[0, n] == expected).all(), n


def test_padded_nodes_keep_nothing_and_do_not_count():
    ds = make_snp(layers=2, nodes=6, labels=5, pad_last=2)
    mask = andc_mask(ds, 0.3)
    assert not mask.values[1, 4:].any()
    m = ds["snp_ff"].values
    kept = sum(
        int(m[layer, n, j, j] > 0.3)
        for layer in range(2)
        for n in range(6 if layer == 0 else 4)
        for j in range(5)
    )
    total = (6 + 4) * 5
    assert pruned_fraction(mask) == pytest.approx(1 - kept / total)
    per_layer = pruned_fraction(mask, keep_dims=("layer",))
    assert per_layer.sel(layer=1) == pytest.approx(1 - mask.values[1].sum() / 20)


def test_pruned_fraction_hand_case():
    values = np.array([[[True, False, False, False], [True, True, True, True]]])
    mask = xr.DataArray(values, dims=("layer", "node", "label_out"))
    assert pruned_fraction(mask) == pytest.approx(1 - 5 / 8)


def test_random_control_keeps_per_node_counts():
    ds = make_snp(layers=2, nodes=20, labels=10, pad_last=3)
    mask = andc_mask(ds, 0.3)
    rand = random_mask(mask, seed=7, draws=6)
    assert rand.dims == ("draw", "layer", "node", "label_out")
    assert (rand.sum("label_out") == mask.sum("label_out")).all()
    assert pruned_fraction(rand) == pytest.approx(pruned_fraction(mask))
    assert (random_mask(mask, seed=7, draws=6).values == rand.values).all()
    assert not (random_mask(mask, seed=8, draws=6).values == rand.values).all()
    assert not (rand.values == mask.values[None]).all()
    counts = rand.values.sum(axis=(0, 1, 2))
    assert (counts > 0).all()  # every label drawn at some point


def _seqpool_reference(a, g, g0, w, mask):
    """Naive seqpool readout with zeroed weights: a torch module run on the activations."""
    fc = torch.nn.Linear(a.shape[2], w.shape[0], bias=False)
    with torch.no_grad():
        weight = w.clone()
        for n in range(mask.shape[0]):
            for j in range(mask.shape[1]):
                if not mask[n, j]:
                    weight[j, n] = 0.0
        fc.weight.copy_(weight)
        scores = torch.stack([a[b] @ g + g0 for b in range(a.shape[0])])
        pooled = (torch.softmax(scores, dim=1)[:, :, None] * a).sum(1)
        return fc(pooled)


def test_masked_seqpool_equals_naive_readout_with_zeroed_weights():
    torch.manual_seed(0)
    b, t, n, j = 40, 7, 9, 5
    a = torch.randn(b, t, n)
    g, g0, w = torch.randn(n), torch.tensor(0.3), torch.randn(j, n)
    features = site_features(a, "seqpool", w, g, g0)
    rng = np.random.default_rng(1)
    masks = rng.random((4, n, j)) < 0.5
    logits = features.logits(masks)
    labels = rng.integers(0, j, b)
    for k in range(4):
        ref = _seqpool_reference(a, g, g0, w, masks[k]).numpy()
        np.testing.assert_allclose(logits[k], ref, rtol=1e-4, atol=1e-5)
        acc = (ref.argmax(1) == labels).mean()
        assert features.accuracy(masks[k], labels) == pytest.approx(acc)
    np.testing.assert_allclose(
        features.accuracy(masks, labels),
        [
            (_seqpool_reference(a, g, g0, w, masks[k]).numpy().argmax(1) == labels).mean()
            for k in range(4)
        ],
    )


def test_masked_mean_readout():
    torch.manual_seed(1)
    a, w = torch.randn(30, 4, 6), torch.randn(3, 6)
    mask = np.random.default_rng(0).random((6, 3)) < 0.6
    ref = a.mean(1) @ (w * torch.as_tensor(mask.T, dtype=torch.float32)).T
    np.testing.assert_allclose(site_features(a, "mean", w).logits(mask), ref.numpy(), atol=1e-5)


@pytest.mark.parametrize("layout", ["jnt", "node_major", "tokens_major"])
def test_masked_flatten_equals_naive_readout(layout):
    torch.manual_seed(2)
    b, t, n, j = 25, 4, 6, 3
    a = torch.randn(b, t, n)
    w3 = torch.randn(j, n, t)
    mask = np.random.default_rng(3).random((n, j)) < 0.5
    zeroed = w3.clone()
    for node in range(n):
        for label in range(j):
            if not mask[node, label]:
                zeroed[label, node, :] = 0.0
    ref = torch.nn.functional.linear(a.transpose(1, 2).reshape(b, n * t), zeroed.reshape(j, -1))
    if layout == "jnt":
        weight, tokens_major = w3, False
    elif layout == "node_major":
        weight, tokens_major = w3.reshape(j, n * t), False
    else:
        weight, tokens_major = w3.permute(0, 2, 1).reshape(j, t * n), True
    features = site_features(a, "flatten", weight, tokens_major=tokens_major)
    np.testing.assert_allclose(features.logits(mask), ref.numpy(), rtol=1e-4, atol=1e-5)
    masked = pruning.mask_weight(weight, mask, tokens_major=tokens_major)
    if layout == "tokens_major":
        masked = masked.reshape(j, t, n).permute(0, 2, 1)
    np.testing.assert_allclose(masked.reshape(j, n, t).numpy(), zeroed.numpy())


def test_expand_mask_rejects_mismatched_shapes():
    with pytest.raises(SchemaError):
        expand_mask(np.ones((4, 3), bool), (5, 4))
    with pytest.raises(SchemaError):
        expand_mask(np.ones((4, 3), bool), (3, 7))


def test_feature_cache_roundtrip(tmp_path):
    torch.manual_seed(3)
    a = torch.randn(20, 3, 5)
    w = torch.randn(4, 5)
    labels = np.random.default_rng(0).integers(0, 4, 20)
    cache = FeatureCache(
        labels=labels,
        sites={
            0: site_features(a, "mean", w),
            2: site_features(a, "flatten", torch.randn(4, 5, 3)),
        },
        meta={"run": "x"},
    )
    loaded = FeatureCache.load(cache.save(tmp_path / "c"))
    assert isinstance(loaded.sites[2].inputs, np.memmap)
    assert loaded.layers == [0, 2] and loaded.meta == {"run": "x"}
    mask = np.random.default_rng(1).random((5, 4)) < 0.5
    for layer in (0, 2):
        assert loaded.accuracy(layer, mask) == cache.accuracy(layer, mask)
    assert loaded.base_accuracy() == cache.base_accuracy()
    with pytest.raises(SchemaError):
        FeatureCache.load(tmp_path)


def test_retraining_keeps_cut_weights_at_zero():
    torch.manual_seed(4)
    x = torch.randn(200, 8)
    true_w = torch.randn(4, 8)
    y = (x @ true_w.T).argmax(1)
    mask = torch.rand(4, 8) < 0.5
    start = torch.randn(4, 8)
    new = pruning.retrain_masked(start, mask, x, y, epochs=10, lr=0.05, batch_size=32)
    assert (new[~mask] == 0).all()
    assert not torch.allclose(new[mask], start[mask])

    def loss(w):
        return torch.nn.functional.cross_entropy(x @ (w * mask).T, y)

    assert loss(new) < loss(start)


def test_network_mask_from_constructed_label_sets():
    src = np.array([[1, 0, 0], [0, 1, 1], [0, 0, 0]], bool)  # D_u for 3 source nodes
    dst = np.array([[1, 1, 0], [0, 0, 1]], bool)  # D_v for 2 destination nodes
    keep = pruning.network_mask(src, dst).numpy()
    expected = np.array([[any(src[u] & dst[v]) for u in range(3)] for v in range(2)])
    assert keep.shape == (2, 3) and (keep == expected).all()
    assert keep.tolist() == [[True, True, False], [False, True, False]]


def _tiny_vgg():
    from statmech_nn.models.vgg import VGG

    return VGG(num_classes=4, img_size=8, widths=[4, "M", 6, 5]).eval()


def test_vgg_network_masks_zero_kernel_slices_and_can_be_undone():
    torch.manual_seed(5)
    model = _tiny_vgg()
    conns = pruning.connections(model)
    assert [(c.src_layer, c.dst_layer) for c in conns] == [(0, 1), (1, 2)]
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert model.get_submodule(conns[0].module) is convs[1]
    rng = np.random.default_rng(0)
    masks = {
        c.module: torch.as_tensor(rng.random(model.get_submodule(c.module).weight.shape[:2]) < 0.5)
        for c in conns
    }
    original = {p: model.get_submodule(p).weight.detach().clone() for p in masks}
    x = torch.randn(2, 3, 8, 8)
    reference = _tiny_vgg()
    reference.load_state_dict(model.state_dict())
    with torch.no_grad():
        for path, mask in masks.items():
            w = reference.get_submodule(path).weight
            for v in range(w.shape[0]):
                for u in range(w.shape[1]):
                    if not mask[v, u]:
                        w[v, u] = 0.0
    pruning.apply_network_masks(model, masks)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x))
    removed = sum(int((~m).sum()) * 9 for m in masks.values())
    total = sum(m.numel() * 9 for m in masks.values())
    assert pruning.masked_weight_fraction(model, masks) == pytest.approx(removed / total)
    pruning.remove_network_masks(model, permanent=False)
    for path, w in original.items():
        torch.testing.assert_close(model.get_submodule(path).weight, w)
    pruning.apply_network_masks(model, masks)
    pruning.remove_network_masks(model, permanent=True)
    for path, mask in masks.items():
        w = model.get_submodule(path).weight
        assert (w[~mask] == 0).all() and "parametrizations" not in dict(model.named_modules())


def test_cct_network_masks_follow_shared_diagonal_labels():
    from statmech_nn.models import registry

    model = registry.create("cct_2_3x2_32", num_classes=5, img_size=32).eval()
    conns = pruning.connections(model)
    assert [
        (c.module.rsplit(".", 1)[1], c.src_kind, c.src_layer, c.dst_kind, c.dst_layer)
        for c in conns
    ] == [
        ("linear2", "ff_hidden", 0, "ff", 0),
        ("linear1", "ff", 0, "ff_hidden", 1),
        ("linear2", "ff_hidden", 1, "ff", 1),
    ]
    d = model.classifier.blocks[0].linear1.in_features
    h = model.classifier.blocks[0].linear1.out_features
    ds = make_snp(layers=2, nodes=d, labels=5, seed=9)
    rng = np.random.default_rng(2)
    hidden = rng.uniform(-0.2, 1.0, (2, h, 5, 5)).astype(np.float32)
    ds = ds.drop_vars(["snp_ff_hidden", "node_ff_hidden"]).assign(
        snp_ff_hidden=(("layer", "node_ff_hidden", "label_true", "label_out"), hidden)
    )
    masks = pruning.network_masks(ds, model, theta=0.5)
    ff_d = np.diagonal(ds["snp_ff"].values, axis1=2, axis2=3) > 0.5
    hid_d = np.diagonal(hidden, axis1=2, axis2=3) > 0.5
    lin1 = masks["classifier.blocks.1.linear1"].numpy()
    assert lin1.shape == (h, d)
    for v in range(0, h, 7):
        for u in range(0, d, 5):
            assert lin1[v, u] == bool((hid_d[1, v] & ff_d[0, u]).any())
    lin2 = masks["classifier.blocks.0.linear2"].numpy()
    assert lin2.shape == (d, h)
    assert lin2[3, 4] == bool((ff_d[0, 3] & hid_d[0, 4]).any())
    with pytest.raises(SchemaError, match="ff_hidden"):
        pruning.network_masks(ds.drop_vars("snp_ff_hidden"), model)


def test_random_control_curve_fraction_grows_with_theta():
    from statmech_nn.studies import synthetic_problem

    problem = synthetic_problem(layers=2, nodes=16, labels=6, samples=200)
    curve = pruning.random_control_curve(problem.cache, problem.diag, [0.1, 0.5, 0.9], draws=3)
    assert (np.diff(curve["fraction"]) >= 0).all()
    keep = problem.keep(np.array([0.5, 0.5]))
    assert curve["fraction"][1] == pytest.approx(1 - keep.sum() / keep.size)
    assert curve["andc_accuracy"][1] == pytest.approx(problem.evaluate(0.5)["andc.accuracy"])
    assert ((curve["random_mean"] >= 0) & (curve["random_mean"] <= 1)).all()


# -- one strict threshold rule ---------------------------------------------------------------------


THETA = 0.3


def tied_matrices(layers=2, nodes=8, labels=5, seed=11) -> np.ndarray:
    """float32 matrices with many elements (diagonal and off-diagonal) exactly float32(THETA)."""
    rng = np.random.default_rng(seed)
    m = rng.uniform(-0.2, 1.0, (layers, nodes, labels, labels)).astype(np.float32)
    ties = rng.random(m.shape) < 0.3
    m[ties] = np.float32(THETA)
    return m


def test_values_exactly_theta_are_never_kept_by_any_mask_path():
    from statmech_nn import snp
    from statmech_nn.models.vgg import VGG
    from statmech_nn.naming import exceeds
    from statmech_nn.studies import AndcProblem, synthetic_problem

    # in float64 the stored float32(0.3) is above 0.3: a float64 comparison would keep it
    assert float(np.float32(THETA)) > THETA
    m = tied_matrices()
    layers, nodes, labels = m.shape[:3]
    ds = make_snp(layers=layers, nodes=nodes, labels=labels).drop_vars(
        ["snp_ff_hidden", "node_ff_hidden"]
    )
    ds["snp_ff"].values[:] = m
    binary = snp.binarize(ds["snp_ff"], THETA).values
    assert (binary == exceeds(m, THETA)).all()
    diag = np.diagonal(m, axis1=2, axis2=3)
    ties = diag == np.float32(THETA)
    assert ties.sum() > 5
    expected = np.diagonal(binary, axis1=2, axis2=3)
    assert not expected[ties].any()
    thetas = np.full(layers, THETA)

    # literal cluster rule on binarize's matrices, for min_cluster_size=2
    expected2 = np.zeros_like(expected)
    for layer in range(layers):
        for n in range(nodes):
            for cluster in literal_clusters(binary[layer, n]):
                if len(cluster) >= 2:
                    expected2[layer, n, cluster] = True
    assert expected2.any() and (expected2 != expected).any()

    paths = {
        "keep_from_diagonals": pruning.keep_from_diagonals(diag, thetas),
        "keep_from_clusters": pruning.keep_from_clusters(m, thetas),
        "andc_keep": pruning.andc_keep(thetas, diag),
        "andc_keep cluster": pruning.andc_keep(thetas, diag, m, "cluster"),
        "andc_mask": andc_mask(ds, THETA).values,
        "andc_mask cluster": andc_mask(ds, THETA, variant="cluster").values,
    }
    base = synthetic_problem(layers=layers, nodes=nodes, labels=labels, samples=60)
    for variant in ("diagonal", "cluster"):
        problem = AndcProblem(
            cache=base.cache,
            diag=diag,
            site_names=base.site_names,
            variant=variant,
            matrices=m,
        )
        paths[f"AndcProblem.keep {variant}"] = problem.keep(thetas)
        fraction = problem.evaluate(THETA)["andc.pruned_fraction"]
        assert fraction == pytest.approx(1 - expected.sum() / expected.size), variant
    for name, keep in paths.items():
        assert (keep == expected).all(), name
    assert (pruning.keep_from_clusters(m, thetas, 2) == expected2).all()
    assert (andc_mask(ds, THETA, variant="cluster", min_cluster_size=2).values == expected2).all()
    problem2 = AndcProblem(
        cache=base.cache,
        diag=diag,
        site_names=base.site_names,
        variant="cluster",
        min_cluster_size=2,
        matrices=m,
    )
    assert (problem2.keep(thetas) == expected2).all()
    curve = pruning.random_control_curve(base.cache, diag, [THETA], draws=1)
    assert curve["fraction"][0] == pytest.approx(1 - expected.sum() / expected.size)

    # network-level masks: D_n = labels whose diagonal exceeds theta by the same rule
    model = VGG(num_classes=labels, img_size=8, widths=[4, "M", 6, 5]).eval()
    conv = tied_matrices(layers=3, nodes=6, labels=labels, seed=12)
    conv[0, 4:] = np.nan
    conv[2, 5:] = np.nan
    cds = xr.Dataset(
        {"snp_conv": (("layer", "node", "label_true", "label_out"), conv)},
        coords={"layer": np.arange(3), "node": np.arange(6)},
    )
    sets = np.diagonal(snp.binarize(cds["snp_conv"], THETA).values, axis1=2, axis2=3)
    assert (np.diagonal(conv, axis1=2, axis2=3) == np.float32(THETA)).sum() > 3
    masks = pruning.network_masks(cds, model, THETA)
    for conn in pruning.connections(model):
        keep = masks[conn.module].numpy()
        n_out, n_in = keep.shape
        src, dst = sets[conn.src_layer, :n_in], sets[conn.dst_layer, :n_out]
        assert (keep == ((dst[:, None, :] & src[None, :, :]).any(-1))).all(), conn.module


def test_xarray_wrappers_agree_with_the_numpy_core():
    ds = make_snp(layers=3, nodes=9, labels=6, seed=5, pad_last=2)
    thetas = [0.2, 0.5, 0.35]
    m = ds["snp_ff"].values
    diag = np.diagonal(m, axis1=2, axis2=3)
    for variant, size in (("diagonal", 1), ("cluster", 1), ("cluster", 2)):
        mask = andc_mask(ds, thetas, variant=variant, min_cluster_size=size)
        core = pruning.andc_keep(np.array(thetas), diag, m, variant, size)
        assert (mask.values == core).all(), (variant, size)
        assert not core[2, 7:].any()
        real = ~np.isnan(diag).all(-1)
        # an independent count: kept over real connections, per layer and in all
        per_layer = [1 - core[i].sum() / (real[i].sum() * 6) for i in range(3)]
        assert pruned_fraction(mask) == pytest.approx(1 - core.sum() / (real.sum() * 6))
        np.testing.assert_allclose(
            pruned_fraction(mask, keep_dims=("layer",)).values, per_layer, rtol=1e-12
        )
    with pytest.raises(pruning.ThresholdError, match="layers"):
        andc_mask(ds, [0.3, 0.3])
