"""SNR and error against the number of labels: subsets, fits, the pipeline and its errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr
from _tiny import SYNTHETIC

from statmech_nn import scaling
from statmech_nn.errors import StatmechError


def test_label_subsets_are_seeded_sorted_and_distinct():
    subsets = scaling.label_subsets(10, [4, 2, 6], draws=3, seed=1)
    assert subsets.dims == ("K", "draw", "slot") and list(subsets["K"].values) == [2, 4, 6]
    for i, k in enumerate([2, 4, 6]):
        for d in range(3):
            row = subsets.values[i, d]
            chosen = row[:k]
            assert (row[k:] == -1).all()
            assert list(chosen) == sorted(set(chosen)) and chosen.min() >= 0 and chosen.max() < 10
    again = scaling.label_subsets(10, [4, 8], draws=3, seed=1)
    np.testing.assert_array_equal(again.sel(K=4).values[:, :4], subsets.sel(K=4).values[:, :4])
    other = scaling.label_subsets(10, [4], draws=3, seed=2)
    assert not np.array_equal(other.sel(K=4).values, subsets.sel(K=4).values[:, :4])
    assert len({tuple(r[:6]) for r in subsets.sel(K=6).values}) > 1


@pytest.mark.parametrize(
    ("ks", "message"),
    [([], "empty"), ([1, 2], "too small"), ([2, 11], "larger than the number of labels")],
)
def test_bad_label_counts(ks, message):
    with pytest.raises(StatmechError, match=message):
        scaling.check_ks(ks, 10)


def test_parse_ks():
    assert scaling.parse_ks("2, 4,6,") == [2, 4, 6]
    for bad in ("", " , ", "2,x"):
        with pytest.raises(StatmechError):
            scaling.parse_ks(bad)
    with pytest.raises(StatmechError, match="draws"):
        scaling.label_subsets(10, [2], draws=0)


def grid(values: np.ndarray, ks) -> xr.DataArray:
    return xr.DataArray(values, dims=("K", "draw"), coords={"K": ks})


def test_linear_fit_on_constructed_data():
    ks = np.array([2, 4, 6, 8, 10])
    exact = grid(np.repeat((0.02 * ks + 0.1)[:, None], 3, axis=1), ks)
    got = scaling.fit(exact)
    assert got["slope"] == pytest.approx(0.02) and got["intercept"] == pytest.approx(0.1)
    assert got["r2"] == pytest.approx(1.0)

    rng = np.random.default_rng(0)
    noisy = 0.5 - 0.03 * ks[:, None] + rng.normal(0, 0.05, (5, 3))
    got = scaling.fit(grid(noisy, ks))
    x = np.repeat(ks, 3).astype(float)
    slope, intercept = np.polyfit(x, noisy.ravel(), 1)
    assert got["slope"] == pytest.approx(slope) and got["intercept"] == pytest.approx(intercept)
    assert got["r2"] == pytest.approx(np.corrcoef(x, noisy.ravel())[0, 1] ** 2)

    with_inf = noisy.copy()
    with_inf[0, 0] = np.inf
    keep = np.isfinite(with_inf.ravel())
    slope, _ = np.polyfit(x[keep], with_inf.ravel()[keep], 1)
    assert scaling.fit(grid(with_inf, ks))["slope"] == pytest.approx(slope)
    assert np.isnan(scaling.fit(grid(np.ones((1, 3)), [4]))["slope"])

    result = scaling.with_fits(xr.Dataset({"error": exact}))
    assert float(result["error_slope"]) == pytest.approx(0.02)


class Source(torch.utils.data.Dataset):
    def __init__(self, targets):
        self.targets = list(targets)

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        return torch.tensor([float(i)]), self.targets[i]


def test_label_subset_relabels_in_ascending_order():
    source = Source([5, 1, 3, 1, 0, 5, 2])
    subset = scaling.LabelSubset(source, [5, 1])
    assert len(subset) == 4
    items = [subset[i] for i in range(len(subset))]
    assert [int(x.item()) for x, _ in items] == [0, 1, 3, 5]  # original indices
    assert [y for _, y in items] == [1, 0, 0, 1]  # 1 -> 0, 5 -> 1


@pytest.mark.slow  # trains readouts for every label subset
def test_scaling_on_a_tiny_network():
    from statmech_nn import models
    from statmech_nn.data import data_for_config

    torch.manual_seed(0)
    model = models.create("cct_2_3x2_32", num_classes=6, img_size=16)
    splits = data_for_config(SYNTHETIC)
    result = scaling.scaling(
        model,
        splits,
        [2, 4],
        draws=2,
        snp_options={"readout_epochs": 1, "batch_size": 32, "device": "cpu"},
    )
    assert result.attrs["site"] == "block1.ff"
    assert result["error"].dims == ("K", "draw") and result["error"].shape == (2, 2)
    np.testing.assert_allclose(result["error"], 1 - result["accuracy"])
    assert ((result["error"] >= 0) & (result["error"] <= 1)).all()
    for name in ("error", "snr", "cluster_size"):
        assert f"{name}_slope" in result and f"{name}_r2" in result
    sub = scaling.subset_splits(splits, result["labels"].sel(K=2, draw=0).values[:2])
    assert sub.num_classes == 2 and set(sub.test.targets) == {0, 1}
    assert len(sub.test) == 2 * 8


@pytest.mark.slow  # the scaling command trains SNP readouts for every label subset
def test_scaling_command(workdir, capsys, fake_training_run):
    import mlflow
    from mlflow.tracking import MlflowClient

    from statmech_nn import cli

    run_id = fake_training_run(seed=0)
    for labels, message in (
        ("", "empty"),
        ("2,7", "larger than the number of labels"),
        ("1,3", "too small"),
    ):
        assert cli.main(["scaling", run_id, "--labels", labels]) == 2
        assert message in capsys.readouterr().err
    assert cli.main(["scaling", "0123456789abcdef0123456789abcdef", "--labels", "2"]) == 2
    assert "no MLflow run" in capsys.readouterr().err

    argv = ["scaling", run_id, "--labels", "2,3", "--draws", "1", "--readout-epochs", "1"]
    assert cli.main([*argv, "--batch-size", "32", "--device", "cpu"]) == 0
    (child,) = mlflow.search_runs(
        search_all_experiments=True,
        filter_string=f"tags.mlflow.parentRunId = '{run_id}' and attributes.run_name = 'scaling'",
        output_format="list",
    )
    assert capsys.readouterr().out.strip().splitlines()[-1] == child.info.run_id
    assert {"scaling.error.slope", "scaling.error.r2", "scaling.snr.slope"} <= set(
        child.data.metrics
    )
    client = MlflowClient()
    steps = sorted(m.step for m in client.get_metric_history(child.info.run_id, "scaling.error"))
    assert steps == [2, 3]
    arts = {f.path for f in client.list_artifacts(child.info.run_id, "scaling")}
    assert "scaling/scaling.nc" in arts
    assert "figures/scaling.png" in {
        f.path for f in client.list_artifacts(child.info.run_id, "figures")
    }
