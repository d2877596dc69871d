"""SNP matrices: vectorised vs the literal reference, invariants, stored form, CLI end to end."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import xarray as xr
from _tiny import SmallCNN, tiny_cct
from torch import nn
from torch.utils.data import TensorDataset

from statmech_nn import snp
from statmech_nn.errors import SchemaError, StatmechError, TrackingError, UnknownNameError
from statmech_nn.models.cct import CCT
from statmech_nn.readout import ReadoutConfig, make_readout, train_readouts
from statmech_nn.sites import resolve
from statmech_nn.snp.reference import (
    collect_activations,
    reference_matrices,
    reference_node_matrices,
)

LABELS = 4


def images(n: int, seed: int, size: int = 16) -> TensorDataset:
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % LABELS
    x = torch.randn(n, 3, size, size, generator=gen) + 0.5 * y[:, None, None, None]
    return TensorDataset(x, y)


def splits(size: int = 16) -> SimpleNamespace:
    return SimpleNamespace(
        train=images(48, 1, size),
        val=images(8, 2, size),
        test=images(36, 3, size),
        classes=["w", "x", "y", "z"],
        num_classes=LABELS,
    )


def random_readouts(model: nn.Module, spec: str, kind: str) -> dict:
    """Untrained readouts with non-trivial pooling parameters (g != 0, g0 != 0)."""
    sites = resolve(model, spec)
    data = images(8, 0, 16 if isinstance(model, CCT) else 8)
    readouts = train_readouts(
        model, sites, data, LABELS, ReadoutConfig(readout=kind, epochs=0), "cpu", progress=False
    )
    acts, _ = collect_activations(model, sites, data)
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, r in readouts.items():
            if kind == "seqpool":
                spread = acts[name].std(dim=1).mean()
                g = torch.randn(r.pool.weight.shape, generator=gen) / spread
                r.pool.weight.copy_(g)
                r.pool.bias.fill_(0.25)
    return readouts


CASES = [
    ("seqpool", "pre_pool"),
    ("seqpool", "post_pool"),
    ("mean", "pre_pool"),
    ("flatten", "pre_pool"),
]


@pytest.mark.parametrize(("kind", "silencing"), CASES)
@pytest.mark.parametrize("net", ["cct", "cnn"])
def test_vectorised_equals_reference(net, kind, silencing):
    model = tiny_cct(peaked=True) if net == "cct" else SmallCNN().eval()
    spec = "block0.mha,block1.ff,block1.ff_hidden" if net == "cct" else "all"
    data = images(30, 4, 16 if net == "cct" else 8)
    readouts = random_readouts(model, spec, kind)
    fast = snp.matrices(
        model,
        readouts,
        data,
        LABELS,
        silencing,
        batch_size=8,
        chunk_size=3,
        device="cpu",
        progress=False,
    )
    slow = reference_matrices(model, readouts, data, LABELS, silencing, device="cpu")
    for name in readouts:
        ref = slow[name].raw
        rel = (fast[name].raw - ref).abs().max() / ref.abs().max()
        assert rel < 1e-5, (name, float(rel))
        assert fast[name].accuracy == pytest.approx(slow[name].accuracy)
        assert torch.equal(fast[name].counts, slow[name].counts)
        if slow[name].head_raw is None:
            assert fast[name].head_raw is None
        else:
            h_ref = slow[name].head_raw
            h_rel = (fast[name].head_raw - h_ref).abs().max() / h_ref.abs().max()
            assert h_rel < 1e-5, (name, float(h_rel))


def test_pre_pool_heads_pool_together_not_node_by_node():
    model = tiny_cct(peaked=True)
    readouts = random_readouts(model, "block0.mha", "seqpool")
    data = images(20, 4)
    pre = snp.matrices(model, readouts, data, LABELS, "pre_pool", device="cpu", progress=False)
    raw, head = pre["block0.mha"].raw, pre["block0.mha"].head_raw
    assert not torch.allclose(head, raw.view(2, 4, LABELS, LABELS).sum(1), rtol=1e-3)


def test_hand_computed_single_token_case():
    """T = 1: every readout gives f_n(b, j) = W[j, n] a[b, 0, n]; M by hand."""
    a = torch.tensor([[[1.0, 2.0]], [[3.0, -1.0]], [[5.0, 0.0]]], dtype=torch.float64)
    y = torch.tensor([0, 0, 1])
    readout = make_readout("mean", 1, 2, 2).double()
    readout.fc.weight.data = torch.tensor([[1.0, 0.5], [-2.0, 1.0]], dtype=torch.float64)
    got = reference_node_matrices(readout, a, y, 2)
    expected_node0 = torch.tensor([[2.0 * 1, 2.0 * -2], [5.0 * 1, 5.0 * -2]])
    expected_node1 = torch.tensor([[0.5 * 0.5, 0.5 * 1], [0.0, 0.0]])
    torch.testing.assert_close(got[0], expected_node0.double())
    torch.testing.assert_close(got[1], expected_node1.double())


def test_post_pool_fields_add_up_to_the_logits():
    model = tiny_cct(peaked=True)
    readouts = random_readouts(model, "block1.mha,block0.ff", "seqpool")
    data = images(24, 5)
    out = snp.matrices(
        model, readouts, data, LABELS, "post_pool", device="cpu", progress=False, exact=True
    )
    acts, labels = collect_activations(model, [r.site for r in readouts.values()], data)
    for name, readout in readouts.items():
        with torch.no_grad():
            logits = readout.double()(acts[name].double())
        means = torch.stack([logits[labels == i].mean(0) for i in range(LABELS)])
        torch.testing.assert_close(out[name].raw.sum(0), means, rtol=1e-9, atol=1e-12)
        if name.endswith("mha"):
            torch.testing.assert_close(out[name].head_raw.sum(0), means, rtol=1e-9, atol=1e-12)


def test_normalise_by_signed_max_and_zero_rule():
    raw = torch.zeros(3, 2, 2, dtype=torch.float64)
    raw[0] = torch.tensor([[2.0, -4.0], [1.0, 0.5]])
    raw[1] = torch.tensor([[-1.0, -0.5], [-3.0, -2.0]])
    norm, scale = snp.normalise(raw)
    torch.testing.assert_close(norm[0], raw[0] / 2.0)
    assert torch.equal(norm[1], torch.zeros(2, 2, dtype=torch.float64))
    assert torch.equal(norm[2], torch.zeros(2, 2, dtype=torch.float64))
    assert scale.tolist() == [2.0, -0.5, 0.0]


@pytest.mark.parametrize(("exact", "tol"), [(True, 1e-12), (False, 1e-6)])
def test_streaming_chunks_give_the_same_result(exact, tol):
    model = SmallCNN().eval()
    data = images(30, 6, 8)
    for kind, silencing in CASES:
        readouts = random_readouts(model, "all", kind)
        kw = dict(device="cpu", progress=False, exact=exact)
        one = snp.matrices(model, readouts, data, LABELS, silencing, 30, 1000, **kw)
        many = snp.matrices(model, readouts, data, LABELS, silencing, 7, 2, **kw)
        for name in readouts:
            scale = one[name].raw.abs().max()
            torch.testing.assert_close(one[name].raw, many[name].raw, rtol=0, atol=tol * scale)


def test_binarize_is_strict_and_checks_theta():
    da = xr.DataArray(np.array([0.3, 0.30001, 1.0, np.nan, -0.5]))
    assert binarized(da).tolist() == [False, True, True, False, False]
    for bad in (0, 1, -0.1, 1.5, "high"):
        with pytest.raises(snp.ThresholdError) as err:
            snp.binarize(da, bad)
        assert isinstance(err.value, ValueError) and isinstance(err.value, StatmechError)


def binarized(da: xr.DataArray) -> np.ndarray:
    return snp.binarize(da, 0.3).values


def test_binarize_compares_in_the_stored_dtype_and_names_the_result():
    """float32(0.3) is the stored 0.3, not above it; the order code's name and attrs are kept."""
    values = np.array([[0.3, 0.31, np.nan, 1.0]], dtype=np.float32)
    da = xr.DataArray(values, dims=("node", "label_out"), name="snp_ff")
    out = snp.binarize(da, 0.3)
    assert out.values.tolist() == [[False, True, False, True]]
    assert out.name == "snp_ff_binary" and out.attrs == {"theta": 0.3}
    ds = xr.Dataset({"snp_ff": da, "head_snp_mha": da * 0.5, "scale_ff": da[0]}, attrs={"a": 1})
    both = snp.binarize(ds, 0.3)
    assert sorted(both.data_vars) == ["head_snp_mha", "snp_ff"]
    assert both.attrs == {"a": 1, "theta": 0.3}
    assert both.head_snp_mha.values.tolist() == [[False, False, False, True]]


def test_unknown_options_raise():
    model = tiny_cct(peaked=True)
    for kwargs in (
        {"readout": "cls"},
        {"silencing": "mid_pool"},
        {"split": "holdout"},
        {"sites": "block9.ff"},
    ):
        with pytest.raises(UnknownNameError):
            snp.compute(model, splits(), readout_epochs=0, progress=False, device="cpu", **kwargs)


@pytest.fixture(scope="module")
def cct_dataset() -> xr.Dataset:
    return snp.compute(
        tiny_cct(peaked=True),
        splits(),
        sites="all",
        readout_epochs=1,
        batch_size=16,
        device="cpu",
        progress=False,
        attrs={"model": "tiny", "extra": {"a": 1}},
    )


def test_dataset_schema(cct_dataset):
    ds = cct_dataset
    for kind in ("mha", "attn_out", "ff_hidden", "ff"):
        assert ds[f"snp_{kind}"].dtype == np.float32
        assert ds[f"acc_{kind}"].dims == ("layer",)
        assert ((ds[f"acc_{kind}"] >= 0) & (ds[f"acc_{kind}"] <= 1)).all()
    assert ds.snp_mha.dims == ("layer", "node", "label_true", "label_out")
    assert ds.snp_ff_hidden.dims == ("layer", "node_ff_hidden", "label_true", "label_out")
    assert ds.head_snp_mha.dims == ("layer", "head", "label_true", "label_out")
    assert ds["head"].dims == ("node",) and ds["head"].values.tolist() == [0] * 4 + [1] * 4
    assert ds.layer.values.tolist() == [0, 1]
    assert ds.label_name_out.values.tolist() == ["w", "x", "y", "z"]
    assert int(ds.count_label.sum()) == ds.attrs["n_samples"] == 36
    assert ds.attrs["schema"] == snp.SCHEMA and ds.attrs["model"] == "tiny"
    assert json.loads(ds.attrs["extra"]) == {"a": 1}
    assert json.loads(ds.attrs["readout_config"])["epochs"] == 1
    for var in ds.variables.values():
        assert len(set(var.dims)) == len(var.dims)
    maxima = ds.snp_ff.max(("label_true", "label_out"))
    assert bool(((maxima == 1) | (maxima == 0)).all())
    scale = ds.scale_ff
    assert bool(((scale > 0) == (maxima == 1)).all())


def test_save_load_round_trip(cct_dataset, tmp_path):
    path = snp.save(cct_dataset, tmp_path / "sub" / "snp.nc")
    assert [p.name for p in path.parent.iterdir()] == ["snp.nc"]
    back = snp.load(path)
    xr.testing.assert_identical(back.drop_attrs(), cct_dataset.drop_attrs())
    assert back.attrs["sites"] == cct_dataset.attrs["sites"]
    import h5py

    with h5py.File(path) as f:
        assert f["snp_mha"].compression == "gzip" and f["snp_mha"].dtype == np.float32
    single = cct_dataset.copy()
    single.attrs["sites"] = ["block0.ff"]
    assert snp.load(snp.save(single, tmp_path / "one.nc")).attrs["sites"] == ["block0.ff"]


def test_load_rejects_foreign_and_corrupt_files(tmp_path):
    foreign = tmp_path / "foreign.nc"
    xr.Dataset({"t": ("x", np.arange(3.0))}).to_netcdf(foreign, engine="h5netcdf")
    with pytest.raises(SchemaError, match="not an SNP tensor"):
        snp.load(foreign)
    corrupt = tmp_path / "corrupt.nc"
    corrupt.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(range(200)))
    with pytest.raises(SchemaError):
        snp.load(corrupt)
    with pytest.raises(FileNotFoundError):
        snp.load(tmp_path / "missing.nc")
    with pytest.raises(SchemaError):
        snp.save(xr.Dataset(), tmp_path / "empty.nc")


def test_cnn_widths_are_padded_with_counts():
    ds = snp.compute(
        SmallCNN().eval(),
        splits(size=8),
        readout="flatten",
        readout_epochs=1,
        batch_size=16,
        device="cpu",
        progress=False,
    )
    assert ds.snp_conv.shape == (2, 6, LABELS, LABELS)
    assert ds.node_count_conv.values.tolist() == [4, 6]
    assert bool(np.isnan(ds.snp_conv.sel(layer=0, node=slice(4, None))).all())
    assert not bool(np.isnan(ds.snp_conv.sel(layer=1)).any())
    assert ds.attrs["silencing"] == "none"


def test_vit_pytorch_cct_gives_our_tensor():
    cct = pytest.importorskip("vit_pytorch.cct")
    ours = tiny_cct(peaked=True)
    theirs = cct.CCT(
        img_size=16,
        embedding_dim=8,
        num_layers=2,
        num_heads=2,
        mlp_ratio=2,
        num_classes=LABELS,
        kernel_size=3,
        stride=1,
        padding=1,
        positional_embedding="learnable",
        attention_dropout=0.0,
        stochastic_depth_rate=0.0,
    )
    theirs.load_state_dict(ours.state_dict())
    kwargs = dict(
        sites="mha,ff,ff_hidden,attn_out",
        readout_epochs=1,
        batch_size=16,
        device="cpu",
        progress=False,
    )
    mine = snp.compute(ours, splits(), **kwargs)
    other = snp.compute(theirs.eval(), splits(), **kwargs)
    assert mine.attrs["sites"] == other.attrs["sites"]
    xr.testing.assert_allclose(mine.drop_attrs(), other.drop_attrs(), rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_cli_end_to_end(workdir, capsys, monkeypatch):
    import mlflow

    from statmech_nn.cli import main
    from statmech_nn.train import TrainConfig, train

    config = TrainConfig(
        model="cct_2_3x2_32",
        dataset="digits",
        epochs=1,
        batch_size=64,
        img_size=16,
        limit_train=96,
        limit_eval=32,
        device="cpu",
        amp=False,
    )
    run_id = train(config)
    with pytest.raises(TrackingError, match="no finished SNP child run"):
        snp.load_from_run(run_id)

    def broken(*args, **kwargs):
        raise RuntimeError("interrupted")

    with monkeypatch.context() as patch, pytest.raises(RuntimeError):
        patch.setattr(snp.runs, "compute", broken)
        snp.compute_for_run(run_id, readout_epochs=0, progress=False, device="cpu")
    with pytest.raises(TrackingError):
        snp.load_from_run(run_id)

    capsys.readouterr()
    code = main(
        [
            "snp",
            run_id,
            "--readout-epochs",
            "1",
            "--limit-train",
            "96",
            "--limit-eval",
            "40",
            "--batch-size",
            "32",
            "--device",
            "cpu",
            "--no-progress",
        ]
    )
    assert code == 0
    child = capsys.readouterr().out.strip().splitlines()[-1]
    ds = snp.load_from_run(run_id)
    xr.testing.assert_identical(ds, snp.load_from_run(child))
    assert ds.attrs["mlflow_run_id"] == child and ds.attrs["training_run_id"] == run_id
    assert ds.attrs["n_samples"] == 40 and ds.attrs["model"] == "cct_2_3x2_32"
    assert ds.layer.values.tolist() == [0, 1]
    assert set(ds.attrs["sites"]) == {
        f"block{i}.{k}" for i in range(2) for k in ("mha", "attn_out", "ff_hidden", "ff")
    }
    run = mlflow.tracking.MlflowClient().get_run(child)
    assert run.data.tags["statmech_nn.kind"] == "snp"
    assert run.data.tags["mlflow.parentRunId"] == run_id
    assert run.data.params["readout"] == "seqpool" and run.data.params["silencing"] == "pre_pool"
    assert run.data.metrics["acc.readout.mha.block1"] == pytest.approx(
        float(ds.acc_mha.sel(layer=1))
    )
    assert main(["snp", run_id, "--sites", "block9.mha", "--no-progress"]) == 2
    assert "unknown site" in capsys.readouterr().err


SNP_MODULES = ["engine", "dataset", "store", "runs", "reference"]


def _fresh_import(statement: str) -> list[str]:
    """Run ``statement`` in a fresh interpreter; the I/O modules it left imported."""
    import subprocess
    import sys

    probe = (
        f"{statement}\nimport sys\n"
        "print(','.join(m for m in ('mlflow', 'h5netcdf', 'netCDF4') if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=False, timeout=300
    )
    assert done.returncode == 0, done.stderr
    return [m for m in done.stdout.strip().split(",") if m]


@pytest.mark.slow  # fresh interpreters; tests/test_structure.py checks it statically
@pytest.mark.parametrize("module", SNP_MODULES)
def test_every_snp_module_imports_alone_first(module):
    """No import cycle: each module imports in a fresh interpreter before any other of ours."""
    _fresh_import(f"import statmech_nn.snp.{module}")


@pytest.mark.slow  # fresh interpreters; tests/test_structure.py checks it statically
def test_the_science_imports_no_io():
    assert _fresh_import("import statmech_nn.snp.engine") == []
    assert "mlflow" not in _fresh_import("import statmech_nn.snp, statmech_nn.order")


def test_public_names_and_one_home():
    from statmech_nn import errors, naming, order
    from statmech_nn.snp import dataset, engine, runs, store

    assert snp.binarize is dataset.binarize is order.binarize
    assert snp.ThresholdError is errors.ThresholdError is order.ThresholdError
    assert order.check_theta is naming.check_theta
    assert snp.for_run is snp.compute_for_run is runs.compute_for_run
    assert snp.matrices is engine.matrices and snp.save is store.save
    assert set(snp.__all__) <= set(dir(snp))
