"""Network-level ANDC end to end, the random control, and the SNP run's stored readouts."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import pytest
import torch
import xarray as xr
from torch.utils.data import TensorDataset

from statmech_nn import pruning as npr
from statmech_nn import snp, tracking
from statmech_nn.data import subset
from statmech_nn.pruning import network_masks


def label_sets(matrices: np.ndarray, theta: float) -> list[list[set[int]]]:
    """``D_n`` per layer and node, literally: labels ``l`` with ``M[l, l] > theta``."""
    out = []
    for layer in matrices:
        rows = []
        for m in layer:
            rows.append({l for l in range(m.shape[0]) if not np.isnan(m[l, l]) and m[l, l] > theta})
        out.append(rows)
    return out


def cut_pairs(dst: list[set[int]], src: list[set[int]]) -> list[tuple[int, int]]:
    """``(v, u)`` pairs whose label sets share nothing: the weights network ANDC removes."""
    return [(v, u) for v in range(len(dst)) for u in range(len(src)) if not dst[v] & src[u]]


def random_snp(shapes: dict[str, tuple[int, int]], labels: int, seed: int) -> xr.Dataset:
    """An SNP-like dataset: per kind ``(layers, nodes)`` normalised random matrices."""
    rng = np.random.default_rng(seed)
    data, coords = {}, {"label_true": np.arange(labels), "label_out": np.arange(labels)}
    for kind, (layers, nodes) in shapes.items():
        m = rng.uniform(-0.3, 1.0, (layers, nodes, labels, labels)).astype(np.float32)
        m /= m.reshape(layers, nodes, -1).max(-1)[..., None, None]
        dim = f"node_{kind}"
        data[f"snp_{kind}"] = (("layer", dim, "label_true", "label_out"), m)
        coords[dim] = np.arange(nodes)
        coords["layer"] = np.arange(layers)
    return xr.Dataset(data, coords=coords)


def random_data(n: int, size: int, labels: int, seed: int) -> TensorDataset:
    gen = torch.Generator().manual_seed(seed)
    return TensorDataset(
        torch.randn(n, 3, size, size, generator=gen), torch.randint(0, labels, (n,), generator=gen)
    )


SETTINGS = npr.RetrainSettings(epochs=1, lr=1e-2, weight_decay=0.05, batch_size=8, seed=0)


def check_pruned(model, before, cut: dict[str, list[tuple[int, int]]]) -> None:
    """Cut weights exactly zero, the others retrained, no parametrization left."""
    assert not any("parametrizations" in k for k in model.state_dict())
    changed = 0
    for path, pairs in cut.items():
        w = model.get_submodule(path).weight.detach()
        w0 = before.get_submodule(path).weight.detach()
        keep = torch.ones(w.shape[:2], dtype=torch.bool)
        for v, u in pairs:
            keep[v, u] = False
            assert (w[v, u] == 0).all()
        changed += int((w[keep] != w0[keep]).sum())
    assert changed > 0


def test_cct_removed_fraction_and_zeros_after_retraining():
    from statmech_nn.models.cct import CCT

    torch.manual_seed(0)
    model = CCT(num_classes=5, img_size=16, embedding_dim=16, num_layers=3, num_heads=2)
    d, h = 16, 32
    ds = random_snp({"ff": (3, d), "ff_hidden": (3, h)}, labels=5, seed=1)
    theta = 0.5
    ff = label_sets(ds["snp_ff"].values, theta)
    hid = label_sets(ds["snp_ff_hidden"].values, theta)
    cut = {}
    for i in range(3):
        cut[f"classifier.blocks.{i}.linear2"] = cut_pairs(ff[i], hid[i])
        if i + 1 < 3:
            cut[f"classifier.blocks.{i + 1}.linear1"] = cut_pairs(hid[i + 1], ff[i])
    total = 3 * d * h + 2 * h * d
    expected = sum(len(p) for p in cut.values()) / total
    assert 0 < expected < 1

    masks = network_masks(ds, model, theta)
    assert set(masks) == set(cut)
    before = copy.deepcopy(model)
    data = random_data(24, 16, 5, seed=2)
    out = npr.prune_model(model, masks, data, data, SETTINGS)
    assert out["removed_fraction"] == pytest.approx(expected, abs=1e-12)
    check_pruned(model, before, cut)
    removed = npr.removed_weights(model, masks)
    assert removed == {p: len(c) for p, c in cut.items()}


def test_vgg_kernel_slices_and_random_control_counts():
    from statmech_nn.models.vgg import VGG

    torch.manual_seed(3)
    model = VGG(num_classes=4, img_size=8, widths=[4, "M", 6, 5])
    ds = random_snp({"conv": (3, 6)}, labels=4, seed=4)
    m = ds["snp_conv"].values
    m[0, 4:] = np.nan  # conv0 has 4 filters, conv2 5: NaN padding as in stored tensors
    m[2, 5:] = np.nan
    ds["snp_conv"].values[:] = m
    theta = 0.4
    sets = label_sets(m, theta)
    convs = [n for n, mod in model.named_modules() if isinstance(mod, torch.nn.Conv2d)]
    cut = {
        convs[1]: cut_pairs(sets[1][:6], sets[0][:4]),
        convs[2]: cut_pairs(sets[2][:5], sets[1][:6]),
    }
    expected = sum(len(p) * 9 for p in cut.values()) / ((6 * 4 + 5 * 6) * 9)
    assert 0 < expected < 1

    masks = network_masks(ds, model, theta)
    for seed in range(3):
        rand = npr.random_network_masks(masks, seed)
        assert {p: int(r.sum()) for p, r in rand.items()} == {
            p: int(k.sum()) for p, k in masks.items()
        }
        assert npr.removed_weights(model, rand) == npr.removed_weights(model, masks)
    assert any(not torch.equal(r, masks[p]) for p, r in npr.random_network_masks(masks, 0).items())
    before = copy.deepcopy(model)
    data = random_data(16, 8, 4, seed=5)
    out = npr.prune_model(model, masks, data, data, SETTINGS)
    assert out["removed_fraction"] == pytest.approx(expected, abs=1e-12)
    check_pruned(model, before, cut)


def test_missing_kinds_name_the_snp_command():
    from statmech_nn.models.cct import CCT

    model = CCT(num_classes=5, img_size=16, embedding_dim=16, num_layers=2, num_heads=2)
    ds = random_snp({"ff": (2, 16)}, labels=5, seed=0)
    with pytest.raises(
        npr.MissingSnpSitesError, match=r"statmech-nn snp RUN1 --sites ff_hidden,ff"
    ):
        npr.check_snp_sites(ds, model, "RUN1")
    full = random_snp({"ff": (2, 16), "ff_hidden": (2, 32)}, labels=5, seed=0)
    npr.check_snp_sites(full, model, "RUN1")
    full["snp_ff_hidden"].values[1] = np.nan  # layer 1 not analysed
    with pytest.raises(npr.MissingSnpSitesError, match="ff_hidden layer 1"):
        npr.check_snp_sites(full, model, "RUN1")


# -- through MLflow ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 1-epoch CCT on digits with an SNP run of ``ff`` only and one of ``ff,ff_hidden``."""
    from statmech_nn.train import TrainConfig, train

    folder = tmp_path_factory.mktemp("prune")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        config = TrainConfig(
            model="cct_2_3x2_32",
            dataset="digits",
            epochs=1,
            batch_size=32,
            img_size=16,
            limit_train=96,
            limit_eval=48,
            device="cpu",
            amp=False,
        )
        run_id = train(config)
        kwargs = dict(readout_epochs=2, limit_train=96, limit_eval=40, batch_size=32)
        ff_only, _ = snp.compute_for_run(run_id, sites="ff", progress=False, device="cpu", **kwargs)
        full, ds = snp.compute_for_run(
            run_id, sites="ff,ff_hidden", progress=False, device="cpu", **kwargs
        )
        yield {"run_id": run_id, "ff_only": ff_only, "snp": full, "ds": ds}


def _artifact_dir(run_id: str) -> Path:
    from mlflow.tracking import MlflowClient

    return Path(unquote(urlparse(MlflowClient().get_run(run_id).info.artifact_uri).path))


def _pick_theta(ds: xr.Dataset, model) -> tuple[float, dict[str, list[tuple[int, int]]]]:
    """A threshold whose masks cut some but not all weights, and the literal cut pairs."""
    for theta in (0.3, 0.1, 0.5, 0.7, 0.05, 0.9):
        ff = label_sets(ds["snp_ff"].values, theta)
        hid = label_sets(ds["snp_ff_hidden"].values, theta)
        cut = {
            "classifier.blocks.0.linear2": cut_pairs(ff[0], hid[0]),
            "classifier.blocks.1.linear1": cut_pairs(hid[1], ff[0]),
            "classifier.blocks.1.linear2": cut_pairs(ff[1], hid[1]),
        }
        total = sum(model.get_submodule(p).weight.numel() for p in cut)
        if 0 < sum(len(c) for c in cut.values()) < total:
            return theta, cut
    raise AssertionError("no threshold gives a non-trivial mask")


@pytest.mark.slow  # trains a CCT and two SNP runs first
def test_prune_network_logs_a_loadable_pruned_checkpoint(trained, capsys):
    import mlflow

    from statmech_nn.cli import main

    run_id = trained["run_id"]
    with pytest.raises(npr.MissingSnpSitesError, match=rf"statmech-nn snp {run_id} --sites"):
        npr.prune_network(run_id, snp_run_id=trained["ff_only"], device="cpu")

    parent = tracking.load_checkpoint(run_id)
    theta, cut = _pick_theta(trained["ds"], parent.model)
    child, result = npr.prune_network(
        run_id, theta=theta, epochs=1, lr=1e-3, device="cpu", random_draws=2
    )
    assert result["snp_run_id"] == trained["snp"]
    total = sum(parent.model.get_submodule(p).weight.numel() for p in cut)
    assert result["removed_fraction"] == pytest.approx(
        sum(len(c) for c in cut.values()) / total, abs=1e-12
    )
    assert result["removed_weights"] == {p: len(c) for p, c in cut.items()}

    client = mlflow.tracking.MlflowClient()
    info = client.get_run(child)
    assert info.data.tags["statmech_nn.kind"] == "andc-network"
    assert info.data.tags["mlflow.parentRunId"] == run_id
    assert float(info.data.params["theta"]) == theta and info.data.params["epochs"] == "1"
    metrics = info.data.metrics
    for key in (
        "removed_fraction",
        "acc_before",
        "acc_pruned",
        "acc_retrained",
        "random_acc_pruned",
        "random_acc_retrained",
    ):
        assert metrics[f"andc.network.{key}"] == pytest.approx(result[key])
    training_acc = client.get_run(run_id).data.metrics["test_acc"]
    assert result["acc_before"] == pytest.approx(training_acc, abs=1e-12)

    pruned = tracking.load_checkpoint(child)
    assert pruned.model_config == parent.model_config and pruned.epoch == 1
    assert set(pruned.model.state_dict()) == set(parent.model.state_dict())
    check_pruned(pruned.model, parent.model, cut)
    state, _ = tracking.read_run_checkpoint(child)
    for path, pairs in cut.items():
        assert int((~state["masks"][path]).sum()) == len(pairs)

    capsys.readouterr()
    code = main(["prune", run_id, "--theta", str(theta), "--epochs", "0", "--random-draws", "0"])
    out = capsys.readouterr().out.strip().splitlines()
    assert code == 0 and client.get_run(out[-1]).data.tags["statmech_nn.kind"] == "andc-network"
    assert "removed" in out[1]
    assert main(["prune", run_id, "--theta", "1.5"]) == 2
    assert "outside (0, 1)" in capsys.readouterr().err


@pytest.mark.slow  # trains a CCT and two SNP runs first
def test_snp_run_readouts_round_trip_and_feed_build_problem(trained):
    import mlflow

    from statmech_nn import studies
    from statmech_nn.data import data_for_config
    from statmech_nn.readout import evaluate
    from statmech_nn.sites import resolve

    snp_id, ds = trained["snp"], trained["ds"]
    folder = _artifact_dir(snp_id) / "snp"
    states = torch.load(folder / "readouts.pt", weights_only=True)
    meta = json.loads((folder / "readouts.json").read_text())
    names = [f"block{i}.{k}" for i in range(2) for k in ("ff_hidden", "ff")]
    assert set(states) == set(names) == set(meta["sites"])
    for name in names:
        shapes = {k: list(v.shape) for k, v in states[name].items()}
        assert shapes == meta["sites"][name]["shapes"]
        assert meta["sites"][name]["readout"] == "seqpool"

    ckpt = tracking.load_checkpoint(trained["run_id"])
    sites = resolve(ckpt.model, names)
    readouts = snp.load_readouts(snp_id, sites, device="cpu")
    for name in names:
        for key, value in states[name].items():
            assert torch.equal(readouts[name].state_dict()[key], value)
    test = subset(data_for_config(ckpt.config).test, 40, 0)
    acc = evaluate(ckpt.model, readouts, test, batch_size=32, device="cpu", progress=False)
    for site in sites:
        assert acc[site.name] == pytest.approx(float(ds[f"acc_{site.kind}"].sel(layer=site.layer)))

    problem_dir = studies.build_problem(snp_id, kind="ff", device="cpu", progress=False)
    problem = json.loads((Path(problem_dir) / "problem.json").read_text())
    assert problem["readouts"] == "stored"
    metrics = mlflow.tracking.MlflowClient().get_run(snp_id).data.metrics
    loaded = studies.AndcProblem.load(problem_dir)
    for layer, value in loaded.cache.base_accuracy().items():
        assert value == pytest.approx(metrics[f"acc.readout.ff.block{layer}"], abs=1e-12)

    tampered = {k: {n: -t for n, t in v.items()} for k, v in states.items()}
    torch.save(tampered, folder / "readouts.pt")
    try:
        problem_dir = studies.build_problem(
            snp_id, kind="ff", device="cpu", progress=False, rebuild=True
        )
        cache = studies.AndcProblem.load(problem_dir).cache
        for layer in (0, 1):
            expected = tampered[f"block{layer}.ff"]["fc.weight"].numpy()
            np.testing.assert_array_equal(cache.sites[layer].weight, expected)
    finally:
        torch.save(states, folder / "readouts.pt")

    (folder / "readouts.json").rename(folder / "readouts.json.bak")
    try:
        assert snp.load_readouts(snp_id, sites) is None
        problem_dir = studies.build_problem(
            snp_id, kind="ff", device="cpu", progress=False, rebuild=True
        )
        assert json.loads((Path(problem_dir) / "problem.json").read_text())["readouts"] == (
            "retrained"
        )
        cache = studies.AndcProblem.load(problem_dir).cache
        for layer in (0, 1):
            expected = states[f"block{layer}.ff"]["fc.weight"].numpy()
            np.testing.assert_allclose(cache.sites[layer].weight, expected, rtol=1e-5, atol=1e-6)
    finally:
        (folder / "readouts.json.bak").rename(folder / "readouts.json")
