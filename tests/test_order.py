"""Clusters, noise, signal and SNR against a straightforward pure-Python reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import xarray as xr

from statmech_nn import order
from statmech_nn.errors import SchemaError, StatmechError
from statmech_nn.naming import exceeds
from statmech_nn.order import clusters as clusters_module
from statmech_nn.order import stats as stats_module

# -- independent reference: methods section 5 read literally --------------------------------


def ref_clusters(b: list[list[bool]]) -> list[list[int]]:
    n = len(b)
    unassigned = [l for l in range(n) if b[l][l]]
    clusters = []
    while unassigned:
        cluster = [unassigned[0]]
        for l in unassigned[1:]:
            if all(b[m][l] and b[l][m] for m in cluster):
                cluster.append(l)
        unassigned = [l for l in unassigned if l not in cluster]
        clusters.append(cluster)
    return clusters


def ref_node(b: list[list[bool]]) -> dict:
    clusters = ref_clusters(b)
    n = len(b)
    block = {(i, j) for c in clusters for i in c for j in c}
    ones = sum(b[i][j] for i in range(n) for j in range(n))
    column_noise = [sum(b[i][j] and (i, j) not in block for i in range(n)) for j in range(n)]
    return {
        "clusters": clusters,
        "signal": sum(len(c) for c in clusters),
        "elements": sum(len(c) ** 2 for c in clusters),
        "noise": ones - sum(len(c) ** 2 for c in clusters),
        "cluster_noise": [sum(column_noise[j] for j in c) for c in clusters],
    }


def ref_ratio(num: float, den: float) -> float:
    if den == 0:
        return math.inf if num > 0 else math.nan
    return num / den


def ref_site(layer_matrices: list[list[list[bool]]]) -> dict:
    nodes = [ref_node(b) for b in layer_matrices]
    with_c = [r for r in nodes if r["clusters"]]
    out = {"nodes_clustered": len(with_c)}
    for key in ("signal", "noise"):
        out[f"{key}_all"] = sum(r[key] for r in nodes) / len(nodes)
        out[f"{key}_clustered"] = sum(r[key] for r in with_c) / len(with_c) if with_c else math.nan
    for variant, num_key in (("labels", "signal"), ("elements", "elements")):
        if with_c:
            num = sum(r[num_key] for r in with_c) / len(with_c)
            den = sum(r["noise"] for r in with_c) / len(with_c)
            out[f"snr_{variant}"] = ref_ratio(num, den)
        else:
            out[f"snr_{variant}"] = math.nan
        finite = [r[num_key] / r["noise"] for r in with_c if r["noise"] > 0]
        out[f"snr_{variant}_mean"] = sum(finite) / len(finite) if finite else math.nan
        out[f"snr_{variant}_zero_noise"] = sum(1 for r in with_c if r["noise"] == 0)
    pairs = [
        (len(c), cn) for r in nodes for c, cn in zip(r["clusters"], r["cluster_noise"], strict=True)
    ]
    if pairs:
        out["snr_per_cluster"] = ref_ratio(
            sum(p[0] for p in pairs) / len(pairs), sum(p[1] for p in pairs) / len(pairs)
        )
    else:
        out["snr_per_cluster"] = math.nan
    finite = [s / cn for s, cn in pairs if cn > 0]
    out["snr_per_cluster_mean"] = sum(finite) / len(finite) if finite else math.nan
    out["snr_per_cluster_zero_noise"] = sum(1 for _, cn in pairs if cn == 0)
    sizes = [len(c) for r in nodes for c in r["clusters"]]
    out["cluster_size"] = sum(sizes) / len(sizes) if sizes else math.nan
    out["hist"] = {s: sizes.count(s) for s in set(sizes)}
    return out


def random_binary(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """Random matrices with planted symmetric blocks plus noise, so clusters of all sizes occur."""
    out = np.zeros((n, size, size), dtype=bool)
    for k in range(n):
        labels = rng.permutation(size)
        groups = np.split(
            labels, np.sort(rng.choice(np.arange(1, size), rng.integers(0, size), replace=False))
        )
        for g in groups:
            if rng.random() < 0.8:
                out[k][np.ix_(g, g)] = True
        density = rng.choice([0.0, 0.05, 0.2, 0.5])
        out[k] ^= rng.random((size, size)) < density
    return out


def as_lists(b: np.ndarray) -> list[list[bool]]:
    return [[bool(x) for x in row] for row in b]


def make_snp(matrices: dict[str, np.ndarray], acc: bool = True) -> xr.Dataset:
    """A small SNP dataset following docs/architecture.md (float matrices in [-1, 1])."""
    ds = xr.Dataset()
    first = None
    for kind, m in matrices.items():
        layers, nodes, labels, _ = m.shape
        node_dim = "node" if first in (None, nodes) else f"node_{kind}"
        first = first or nodes
        ds[f"snp_{kind}"] = (("layer", node_dim, "label_true", "label_out"), m.astype(np.float32))
        if acc:
            ds[f"acc_{kind}"] = ("layer", np.linspace(0.2, 0.9, layers))
    return ds.assign_coords(
        layer=np.arange(next(iter(matrices.values())).shape[0]),
        label_true=np.arange(labels),
        label_out=np.arange(labels),
    )


def to_float(binary: np.ndarray, rng: np.random.Generator, theta: float = 0.3) -> np.ndarray:
    """Float matrices in [-1, 1] whose ``> theta`` binarisation is ``binary``."""
    hi = rng.uniform(theta + 1e-3, 1.0, binary.shape)
    lo = rng.uniform(-1.0, theta, binary.shape)
    return np.where(binary, hi, lo)


# -- slow literal oracle: the unchunked implementation before issue 11 (label loop, full masks) ----


def oracle_greedy_clusters(binary: np.ndarray) -> np.ndarray:
    """The label-by-label greedy pass over all nodes, with ``labels x labels`` flags per node."""
    batch, n_labels = binary.shape[:-2], binary.shape[-1]
    flat = binary.reshape(-1, n_labels, n_labels)
    n_nodes = flat.shape[0]
    mutual = flat & flat.transpose(0, 2, 1)
    diagonal = np.diagonal(flat, axis1=1, axis2=2)
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


def oracle_node_clusters(binary: np.ndarray) -> order.NodeClusters:
    """Clusters, signal and noise with the explicit ``same-cluster`` mask of every node."""
    cluster = oracle_greedy_clusters(binary)
    batch, n_labels = binary.shape[:-2], binary.shape[-1]
    flat_b = binary.reshape(-1, n_labels, n_labels)
    flat_c = cluster.reshape(-1, n_labels)
    n_nodes = flat_b.shape[0]
    same = (flat_c[:, :, None] == flat_c[:, None, :]) & (flat_c[:, :, None] >= 0)
    column_noise = (flat_b & ~same).sum(axis=1)
    member = flat_c >= 0
    index = (np.arange(n_nodes)[:, None] * n_labels + np.where(member, flat_c, 0))[member]
    sizes = np.bincount(index, minlength=n_nodes * n_labels).reshape(n_nodes, n_labels)
    cluster_noise = np.bincount(
        index, weights=column_noise[member], minlength=n_nodes * n_labels
    ).reshape(n_nodes, n_labels)
    return order.NodeClusters(
        diagonal=np.diagonal(flat_b, axis1=1, axis2=2).reshape(*batch, n_labels),
        cluster=cluster,
        sizes=sizes.reshape(*batch, n_labels),
        ones=flat_b.sum(axis=(1, 2)).reshape(batch),
        in_blocks=same.sum(axis=(1, 2)).reshape(batch),
        column_noise=column_noise.reshape(*batch, n_labels),
        cluster_noise=cluster_noise.astype(np.int64).reshape(*batch, n_labels),
    )


def oracle_layer_clusters(values: np.ndarray, theta: float) -> order.NodeClusters:
    """The whole layer binarised at once (``naming.exceeds``), then the oracle clusters."""
    return oracle_node_clusters(exceeds(values, theta))


def oracle_real_nodes(values: np.ndarray) -> np.ndarray:
    """Real nodes: not every element NaN, checked on every element of every node."""
    return ~np.isnan(values).all(axis=(-2, -1))


THETAS = (0.3, 0.1, 0.55, 0.9)


def tricky_snp(rng: np.random.Generator, layers: int, nodes: int, labels: int) -> xr.Dataset:
    """Float SNP matrices with planted blocks, ties at float32(theta) and NaN padding.

    Every theta of ``THETAS`` sits exactly on many elements (diagonals included), so a comparison
    in float64 or a non-strict one would change clusters. Layer 0 has padded nodes; one real node
    has an all-NaN diagonal, another NaN rows (a label without test samples).
    """
    binary = random_binary(rng, layers * nodes, labels).reshape(layers, nodes, labels, labels)
    values = to_float(binary, rng).astype(np.float32)
    for theta in THETAS:
        values[rng.random(values.shape) < 0.04] = np.float32(theta)
        values[rng.random(values.shape) < 0.02] = np.nextafter(np.float32(theta), np.float32(1))
    values[0, -2:] = np.nan
    idx = np.arange(labels)
    values[0, 0, idx, idx] = np.nan
    values[-1, 1, labels // 2] = np.nan
    return make_snp({"ff": values})


def assert_datasets_identical(got: xr.Dataset, want: xr.Dataset) -> None:
    assert set(got.data_vars) == set(want.data_vars)
    xr.testing.assert_identical(got, want)


# -- tests -------------------------------------------------------------------------------------


def test_random_matrices_agree_with_reference():
    rng = np.random.default_rng(0)
    cases = 0
    for size in (1, 2, 3, 5, 8, 13):
        batch = random_binary(rng, 60, size)
        nc = order.node_clusters(batch)
        for k, b in enumerate(batch):
            ref = ref_node(as_lists(b))
            got = [list(np.flatnonzero(nc.cluster[k] == c)) for c in range(int(nc.n_clusters[k]))]
            assert got == ref["clusters"]
            assert nc.signal[k] == ref["signal"]
            assert nc.noise[k] == ref["noise"]
            assert nc.in_blocks[k] == ref["elements"]
            assert list(nc.cluster_noise[k][: len(ref["clusters"])]) == ref["cluster_noise"]
            assert list(nc.sizes[k][: len(ref["clusters"])]) == [len(c) for c in ref["clusters"]]
            cases += 1
    assert cases >= 300


@pytest.mark.parametrize("group_elements", [1, 40, 1 << 22])
def test_greedy_matches_the_label_loop_oracle(monkeypatch, group_elements):
    """Any grouping of nodes (one per group up to all at once) gives the oracle's clusters."""
    monkeypatch.setattr(clusters_module, "GROUP_ELEMENTS", group_elements)
    rng = np.random.default_rng(11)
    for size in (1, 2, 6, 17, 40):
        batch = random_binary(rng, 40, size).reshape(2, 4, 5, size, size)
        got, want = order.node_clusters(batch), oracle_node_clusters(batch)
        for name, value in vars(want).items():
            np.testing.assert_array_equal(getattr(got, name), value, err_msg=name)
        np.testing.assert_array_equal(order.greedy_clusters(batch), want.cluster)


def test_dense_diagonals_match_the_oracle(monkeypatch):
    """Every label on the diagonal (the worst case for the greedy pass), mixed with empty nodes."""
    monkeypatch.setattr(clusters_module, "GROUP_ELEMENTS", 300)
    rng = np.random.default_rng(12)
    batch = rng.random((30, 24, 24)) < 0.7
    idx = np.arange(24)
    batch[:20, idx, idx] = True
    batch[20:25] = False
    got, want = order.node_clusters(batch), oracle_node_clusters(batch)
    for name, value in vars(want).items():
        np.testing.assert_array_equal(getattr(got, name), value, err_msg=name)


@pytest.mark.parametrize("theta", THETAS)
def test_chunked_site_statistics_match_the_unchunked_oracle(monkeypatch, theta):
    """Chunked binarisation, diagonal-only grouping and the NaN fast path change nothing."""
    ds = tricky_snp(np.random.default_rng(13), 3, 14, 11)
    monkeypatch.setattr(stats_module, "CHUNK_ELEMENTS", 250)  # two nodes per chunk
    monkeypatch.setattr(clusters_module, "GROUP_ELEMENTS", 100)
    got = order.site_statistics(ds, "ff", theta)
    with monkeypatch.context() as patch:
        patch.setattr(stats_module, "layer_clusters", oracle_layer_clusters)
        patch.setattr(stats_module, "real_nodes", oracle_real_nodes)
        want = order.site_statistics(ds, "ff", theta)
    assert_datasets_identical(got, want)
    assert list(got["nodes"]) == [12, 14, 14]
    ties = exceeds(np.float32(theta), theta)
    assert not ties and exceeds(np.nextafter(np.float32(theta), np.float32(1)), theta)


def test_site_statistics_on_default_budgets_match_the_oracle(monkeypatch):
    ds = tricky_snp(np.random.default_rng(14), 2, 30, 23)
    got = order.site_statistics(ds, "ff", 0.3)
    monkeypatch.setattr(stats_module, "layer_clusters", oracle_layer_clusters)
    monkeypatch.setattr(stats_module, "real_nodes", oracle_real_nodes)
    assert_datasets_identical(got, order.site_statistics(ds, "ff", 0.3))


def test_batched_shape_matches_one_by_one():
    rng = np.random.default_rng(1)
    batch = random_binary(rng, 24, 7).reshape(2, 3, 4, 7, 7)
    together = order.greedy_clusters(batch)
    assert together.shape == (2, 3, 4, 7)
    for idx in np.ndindex(2, 3, 4):
        np.testing.assert_array_equal(together[idx], order.greedy_clusters(batch[idx]))


def block_diagonal(sizes: list[int]) -> np.ndarray:
    n = sum(sizes)
    b = np.zeros((n, n), dtype=bool)
    start = 0
    for s in sizes:
        b[start : start + s, start : start + s] = True
        start += s
    return b


def test_block_diagonal():
    b = block_diagonal([3, 2, 1])
    b[0, 5] = True  # one noise element in column 5
    nc = order.node_clusters(b)
    assert list(nc.cluster) == [0, 0, 0, 1, 1, 2]
    assert nc.signal == 6 and nc.n_clusters == 3
    assert nc.noise == 1
    assert list(nc.cluster_noise[:3]) == [0, 0, 1]


def test_checkerboard():
    n = 6
    i, j = np.indices((n, n))
    nc = order.node_clusters((i + j) % 2 == 0)
    assert list(nc.cluster) == [0, 1, 0, 1, 0, 1]
    assert nc.noise == 0 and nc.signal == 6 and nc.in_blocks == 18


def test_all_zeros_and_all_ones():
    zeros = order.node_clusters(np.zeros((5, 5), dtype=bool))
    assert zeros.n_clusters == 0 and zeros.signal == 0 and zeros.noise == 0
    assert (zeros.cluster == -1).all()
    ones = order.node_clusters(np.ones((5, 5), dtype=bool))
    assert ones.n_clusters == 1 and ones.signal == 5 and ones.noise == 0
    assert list(ones.sizes[:2]) == [5, 0]


def test_greedy_order_and_both_directions():
    b = np.eye(3, dtype=bool)
    b[0, 1] = b[1, 0] = b[0, 2] = b[2, 0] = True  # 1 and 2 both fit 0, but not each other
    assert list(order.greedy_clusters(b)) == [0, 0, 1]
    c = np.eye(2, dtype=bool)
    c[0, 1] = True  # one direction only: no cluster, one noise element
    nc = order.node_clusters(c)
    assert list(nc.cluster) == [0, 1] and nc.noise == 1


def test_site_statistics_agree_with_reference():
    rng = np.random.default_rng(2)
    binary = random_binary(rng, 3 * 20, 9).reshape(3, 20, 9, 9)
    binary[1] = False  # a layer without clusters
    binary[2, :5] = block_diagonal([4, 3, 2])  # zero-noise nodes
    ds = make_snp({"ff": to_float(binary, rng)})
    stats = order.site_statistics(ds, "ff", theta=0.3)
    assert stats["signal"].dims == ("layer", "node")
    assert stats["snr_labels"].dims == ("layer",)
    for layer in range(3):
        ref = ref_site([as_lists(b) for b in binary[layer]])
        for key, value in ref.items():
            if key == "hist":
                hist = stats["cluster_size_hist"].isel(layer=layer)
                assert {
                    int(s): int(c)
                    for s, c in zip(hist["size"].values, hist.values, strict=True)
                    if c
                } == value
                continue
            np.testing.assert_allclose(stats[key].isel(layer=layer), value, err_msg=key)
    np.testing.assert_allclose(stats["accuracy"], ds["acc_ff"])
    assert np.isinf(stats["snr_labels_node"].isel(layer=2, node=0))
    assert np.isnan(stats["snr_labels_node"].isel(layer=1)).all()


def test_theta_is_strict_and_checked():
    m = np.full((1, 1, 2, 2), 0.3, dtype=np.float32)
    m[0, 0, 0, 0] = 1.0
    ds = make_snp({"ff": m})
    stats = order.site_statistics(ds, "ff", theta=0.3)
    assert int(stats["signal"].item()) == 1 and int(stats["noise"].item()) == 0
    assert int(order.site_statistics(ds, "ff", theta=0.29)["ones"].item()) == 4
    for theta in (0.0, 1.0, -0.2, 1.5):
        with pytest.raises(StatmechError, match="outside"):
            order.site_statistics(ds, "ff", theta=theta)


def test_node_dim_names_and_nan_padding():
    rng = np.random.default_rng(3)
    wide = random_binary(rng, 2 * 6, 5).reshape(2, 6, 5, 5)
    narrow = random_binary(rng, 2 * 3, 5).reshape(2, 3, 5, 5)
    conv = to_float(wide, rng)
    conv[0, 4:] = np.nan  # layer 0 has 4 filters, padded to 6
    ds = make_snp({"conv": conv, "ff_hidden": to_float(narrow, rng)})
    assert "node_ff_hidden" in ds["snp_ff_hidden"].dims
    all_stats = order.statistics(ds, theta=0.3)
    assert set(all_stats) == {"conv", "ff_hidden"}
    hidden = all_stats["ff_hidden"]
    assert hidden["signal"].dims == ("layer", "node") and hidden.sizes["node"] == 3
    conv_stats = all_stats["conv"]
    assert list(conv_stats["nodes"]) == [4, 6]
    assert np.isnan(conv_stats["signal"].isel(layer=0, node=slice(4, None))).all()
    ref = ref_site([as_lists(b) for b in wide[0, :4]])
    np.testing.assert_allclose(conv_stats["noise_all"].isel(layer=0), ref["noise_all"])
    np.testing.assert_allclose(conv_stats["snr_labels"].isel(layer=0), ref["snr_labels"])


def test_bad_datasets():
    with pytest.raises(SchemaError, match="snp_"):
        order.statistics(xr.Dataset({"x": ("a", [1.0])}))
    ds = make_snp({"ff": np.zeros((1, 2, 3, 3))})
    with pytest.raises(SchemaError, match="snp_mha"):
        order.site_statistics(ds, "mha")
    with pytest.raises(StatmechError, match="SNR variant"):
        order.snr(order.site_statistics(ds, "ff"), "bogus")


# -- the `order` command on MLflow runs ----------------------------------------------------------


@pytest.mark.slow  # the order command over two checkpoints: SNP readouts trained per checkpoint
def test_order_command_logs_metrics_figures_and_training_curve(
    workdir, capsys, child_runs, fake_training_run
):
    from mlflow.tracking import MlflowClient

    from statmech_nn import cli, snp

    train_id = fake_training_run((0, 1))
    snp.compute_for_run(
        train_id, sites="mha,ff", readout_epochs=1, batch_size=32, device="cpu", progress=False
    )
    rc = cli.main(
        ["order", train_id, "--null-permutations", "30", "--over-checkpoints", "--theta", "0.4"]
    )
    assert rc == 0, capsys.readouterr().err
    (child,) = child_runs(train_id, "order")
    assert capsys.readouterr().out.strip().splitlines()[-1] == child.info.run_id
    assert child.data.tags["statmech_nn.kind"] == "order"
    assert child.data.params["theta"] == "0.4"

    ds = snp.load_from_run(train_id)
    stats = order.statistics(ds, 0.4)
    sym = order.head_symmetry(ds, 0.4, "mha", permutations=30, seed=0)
    metrics = child.data.metrics
    for layer in (0, 1):
        for kind in ("mha", "ff"):
            np.testing.assert_allclose(
                metrics[f"snr.{kind}.block{layer}"], float(stats[kind]["snr_labels"][layer])
            )
            np.testing.assert_allclose(
                metrics[f"noise.{kind}.block{layer}"],
                float(stats[kind]["noise_clustered"][layer]),
            )
        for name in ("Q", "Q_null_mean", "Q_null_std", "Q_pvalue"):
            np.testing.assert_allclose(
                metrics[f"order.{name}.block{layer}"], float(sym[name][layer])
            )
    client = MlflowClient()
    history = client.get_metric_history(child.info.run_id, "order.Q.block1")
    assert sorted(m.step for m in history) == [0, 1]
    figures = {f.path for f in client.list_artifacts(child.info.run_id, "figures")}
    assert {
        "figures/depth.png",
        "figures/gallery_ff.png",
        "figures/gallery_mha.png",
        "figures/expertise_mha.png",
        "figures/q_over_training_mha.png",
    } <= figures
    assert "figures/expertise_ff.png" not in figures  # ff nodes have no heads


def test_order_command_errors(workdir, capsys, fake_training_run):
    from statmech_nn import cli

    train_id = fake_training_run(epochs=(0,))
    assert cli.main(["order", train_id]) == 2
    assert "statmech-nn snp" in capsys.readouterr().err
    assert cli.main(["order", train_id, "--theta", "1.5"]) == 2
    assert "outside (0, 1)" in capsys.readouterr().err
    assert cli.main(["order", "0123456789abcdef0123456789abcdef"]) == 2
    assert "no MLflow run" in capsys.readouterr().err
