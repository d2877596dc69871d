"""Order parameters across MLflow runs: values, params, filters, the Q > 0.5 example, files."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from statmech_nn import query
from statmech_nn.errors import TrackingError

RUNS = {
    "deep": {"theta": "0.3", "Q": [0.1, 0.4, 0.7], "snr": [1.0, 2.0, 3.0], "andc": 0.9},
    "shallow": {"theta": "0.5", "Q": [0.2, 0.3], "snr": [0.5, 0.25], "andc": None},
    "flat": {"theta": "0.3", "Q": [0.6, 0.55, 0.45], "snr": [2.0, 2.0, 2.0], "andc": 0.5},
}


@pytest.fixture
def store(workdir):
    import mlflow

    from statmech_nn import tracking

    tracking.init_store()
    ids = {}
    for name, spec in RUNS.items():
        experiment = "other" if name == "flat" else "main"
        with tracking.run(experiment, run_name=name, tags={"statmech_nn.kind": "order"}) as run:
            ids[name] = run.info.run_id
            mlflow.log_param("theta", spec["theta"])
            metrics = {f"order.Q.block{i}": q for i, q in enumerate(spec["Q"])}
            metrics.update({f"snr.ff.block{i}": s for i, s in enumerate(spec["snr"])})
            if spec["andc"] is not None:
                metrics["andc.accuracy"] = spec["andc"]
            mlflow.log_metrics(metrics)
            mlflow.log_metric("order.Q.block0", -1.0, step=0)  # older step: not the latest
            mlflow.log_metric("order.Q.block0", spec["Q"][0], step=5)
    return ids


def test_variable_names():
    assert query.variable_name("order.Q.block5") == ("order_Q", 5)
    assert query.variable_name("order.Q_null_mean.block12") == ("order_Q_null_mean", 12)
    assert query.variable_name("acc.readout.conv.conv3") == ("acc_readout_conv", 3)
    assert query.variable_name("andc.accuracy") == ("andc_accuracy", None)


def test_values_params_and_layers(store):
    ds = query.order_parameters()
    assert set(ds["run"].values) == set(store.values())
    assert ds["order_Q"].dims == ("run", "layer") and list(ds["layer"].values) == [0, 1, 2]
    for name, spec in RUNS.items():
        row = ds.sel(run=store[name])
        q = row["order_Q"].values
        np.testing.assert_allclose(q[: len(spec["Q"])], spec["Q"])
        assert np.isnan(q[len(spec["Q"]) :]).all()
        np.testing.assert_allclose(row["snr_ff"].values[: len(spec["snr"])], spec["snr"])
        assert str(row["param_theta"].values) == spec["theta"]
        assert str(row["run_name"].values) == name
        assert str(row["run_kind"].values) == "order"
        if spec["andc"] is None:
            assert np.isnan(row["andc_accuracy"])
        else:
            assert float(row["andc_accuracy"]) == spec["andc"]


def test_q_above_half_in_last_block(store):
    ds = query.order_parameters()
    chosen = set(ds["run"][query.last_layer(ds["order_Q"]) > 0.5].values)
    assert chosen == {store["deep"]}  # deep ends at 0.7; shallow at 0.3; flat at 0.45


@pytest.mark.slow  # trains or runs a command end to end
def test_experiment_and_filter(store):
    main = query.order_parameters(experiment="main")
    assert set(main["run"].values) == {store["deep"], store["shallow"]}
    filtered = query.order_parameters(filter_string="params.theta = '0.3'")
    assert set(filtered["run"].values) == {store["deep"], store["flat"]}
    high = query.order_parameters(filter_string="metrics.`order.Q.block2` > 0.5")
    assert set(high["run"].values) == {store["deep"]}
    with pytest.raises(TrackingError, match="no MLflow experiment"):
        query.order_parameters(experiment="missing")


def test_query_command_writes_files(store, workdir, capsys):
    import pandas as pd

    from statmech_nn import cli

    rc = cli.main(["query", "--experiment", "main", "--csv", "q.csv", "--netcdf", "q.nc"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "order_Q" in out and store["deep"][:8] in out and store["flat"][:8] not in out
    table = pd.read_csv(workdir / "q.csv")
    deep = table[table["run"] == store["deep"]].sort_values("layer")
    np.testing.assert_allclose(deep["order_Q"], RUNS["deep"]["Q"])
    with xr.open_dataset(workdir / "q.nc", engine="h5netcdf") as saved:
        np.testing.assert_allclose(
            saved["snr_ff"].sel(run=store["deep"]).values, RUNS["deep"]["snr"]
        )
    assert cli.main(["query", "--filter", "params.theta = '0.9'"]) == 0
    assert "no runs match" in capsys.readouterr().out


def test_layer_labels_match_the_readout_metrics_of_the_snp_run():
    """Order metrics name layers as the snp run's ``acc.readout`` metrics (sites.layer_label)."""
    import json

    from statmech_nn.order import layer_labels
    from statmech_nn.sites import Site, layer_label

    sites = [
        Site("block3.mha", "mha", 3, "classifier.blocks.3.self_attn", heads=2),
        Site("conv4", "conv", 4, "features.10"),
        Site("layer1.0.conv1", "module", 0, "layer1.0.conv1"),
        Site("conv1", "module", 1, "conv1"),
    ]
    specs = [{"name": s.name, "kind": s.kind, "layer": s.layer, "module": s.module} for s in sites]
    labels = layer_labels(xr.Dataset(attrs={"site_specs": json.dumps(specs)}))
    assert labels == {(s.kind, s.layer): layer_label(s) for s in sites}
    assert list(labels.values()) == ["block3", "conv4", "layer0", "layer1"]
    for label in labels.values():
        assert query.variable_name(f"snr.x.{label}") == ("snr_x", int(label[-1]))


@pytest.fixture
def study_store(workdir):
    """A training run, its order run, and two study trials with per-layer and mean accuracy."""
    import mlflow

    from statmech_nn import tracking
    from statmech_nn.naming import KIND_TRIAL

    tracking.init_store()
    ids = {}
    with tracking.run("s", run_name="train") as run:
        ids["train"] = run.info.run_id
        mlflow.log_params({"epochs": "3", "lr": "0.001", "limit_train": "None", "amp": "True"})
        mlflow.log_params({"model": "cct", "label_smoothing": "0.1"})
        mlflow.log_metric("val_acc", 0.5)
    with tracking.run("s", run_name="order", parent_run_id=ids["train"], kind="order") as run:
        ids["order"] = run.info.run_id
        mlflow.log_params({"epochs": "4", "lr": "0.01", "limit_train": "64", "amp": "False"})
        mlflow.log_metrics({"order.Q.block0": 0.2, "order.Q.block1": 0.6})
    for number in range(2):
        name = f"trial-{number}"
        with tracking.run("s", run_name=name, parent_run_id=ids["order"], kind=KIND_TRIAL) as run:
            ids[name] = run.info.run_id
            mlflow.log_param("theta", str(0.25 + number / 10))
            mlflow.log_metrics(
                {"andc.accuracy.block0": 0.8, "andc.accuracy.block1": 0.6 + number / 10}
            )
            mlflow.log_metric("andc.accuracy", 0.7 + number / 20)
    return ids


def test_trials_only_when_asked(study_store):
    runs = set(query.order_parameters()["run"].values)
    assert runs == {study_store["train"], study_store["order"]}
    with_trials = query.order_parameters(trials=True)
    assert set(with_trials["run"].values) == set(study_store.values())


def test_params_are_typed_and_missing_is_nan(study_store):
    ds = query.order_parameters()
    train, order = study_store["train"], study_store["order"]
    assert ds["param_epochs"].dtype == np.int64
    assert ds["param_epochs"].sel(run=order).item() == 4
    assert ds["param_lr"].dtype == np.float64 and ds["param_lr"].sel(run=train).item() == 0.001
    limit = ds["param_limit_train"]  # "None" on one run: a float column with NaN there
    assert limit.dtype == np.float64 and np.isnan(limit.sel(run=train).item())
    assert limit.sel(run=order).item() == 64
    assert ds["param_amp"].dtype == bool and bool(ds["param_amp"].sel(run=train))
    assert np.isnan(ds["param_label_smoothing"].sel(run=order).item())  # only on train
    model = ds["param_model"]
    assert model.sel(run=train).item() == "cct" and np.isnan(model.sel(run=order).item())


@pytest.mark.slow  # trains or runs a command end to end
def test_a_scalar_and_its_per_layer_values_have_distinct_names(study_store, workdir):
    ds = query.order_parameters(trials=True)
    assert "andc_accuracy_scalar" not in ds and ds["andc_accuracy"].dims == ("run",)
    per_layer = ds["andc_accuracy_by_layer"]
    assert per_layer.dims == ("run", "layer")
    trial = study_store["trial-1"]
    assert ds["andc_accuracy"].sel(run=trial).item() == pytest.approx(0.75)
    np.testing.assert_allclose(per_layer.sel(run=trial).values, [0.8, 0.7])
    assert ds["order_Q"].dims == ("run", "layer")  # no scalar twin: the plain name
    query.write_netcdf(ds, str(workdir / "t.nc"))
    with xr.open_dataset(workdir / "t.nc", engine="h5netcdf") as saved:
        assert saved["param_epochs"].dtype.kind in "if"
        assert list(saved["param_model"].sel(run=[study_store["train"], trial]).values) == [
            "cct",
            "",
        ]
