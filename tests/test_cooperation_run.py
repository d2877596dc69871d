"""The ``cooperation`` analysis of an SNP run through MLflow: for_run, the CLI, the report."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _tiny import SYNTHETIC

from statmech_nn import cli, cooperation_run, models, snp, tracking
from statmech_nn.cooperation_report import cooperation_section
from statmech_nn.errors import ConfigError
from statmech_nn.naming import KIND_COOPERATION, KIND_TAG, LAYERED_METRIC

LABELS = 6
SIZES = [1, 2, 128]
NODES = 128  # embedding_dim of cct_2_3x2_32

pytestmark = pytest.mark.slow  # MLflow runs end to end


def _fake_training_run() -> str:
    """A training run holding one checkpoint of a seeded untrained 6-label tiny CCT."""
    with tracking.run("coop", run_name="fake-train") as active:
        run_id = active.info.run_id
        torch.manual_seed(0)
        model = models.create("cct_2_3x2_32", num_classes=LABELS, img_size=16)
        config = {**SYNTHETIC, "model": "cct_2_3x2_32", "model_config": dict(model.config)}
        state = {"model": model.state_dict(), "model_config": dict(model.config), "config": config}
        tracking.log_checkpoint(run_id, {**state, "epoch": 1}, 1)
    return run_id


@pytest.fixture(scope="module")
def analysed(tmp_path_factory):
    """A fake training run, its SNP run (mha, ff) and one cooperation run of ``ff``."""
    folder = tmp_path_factory.mktemp("coop")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        tracking.init_store()
        train_id = _fake_training_run()
        snp_id, ds = snp.compute_for_run(
            train_id,
            sites="mha,ff",
            readout_epochs=2,
            batch_size=32,
            limit_train=64,
            device="cpu",
            progress=False,
        )
        result = cooperation_run.for_run(train_id, sizes=SIZES, draws=2, device="cpu")
        yield {"train": train_id, "snp": snp_id, "ds": ds, "result": result, "root": folder}
        tracking.use_store()


@pytest.fixture
def in_store(analysed, monkeypatch):
    monkeypatch.chdir(analysed["root"])
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tracking.init_store()
    yield analysed
    tracking.use_store()


def _runs() -> list[str]:
    import mlflow

    return sorted(
        r.info.run_id for r in mlflow.search_runs(search_all_experiments=True, output_format="list")
    )


def test_the_child_run_its_metric_names_and_artifact(in_store):
    from mlflow.tracking import MlflowClient

    result = in_store["result"]
    client = MlflowClient()
    run = client.get_run(result.run_id)
    assert run.data.tags[KIND_TAG] == KIND_COOPERATION == "cooperation"
    assert run.data.tags["mlflow.parentRunId"] == in_store["train"]
    assert run.data.params["snp_run_id"] == in_store["snp"] == result.snp_run_id
    assert run.data.params["sizes"] == "1,2,128" and run.data.params["readouts"] == "stored"
    metrics = run.data.metrics
    assert metrics == pytest.approx(result.metrics)
    assert metrics["coop.chance"] == pytest.approx(1 / LABELS)
    for layer in (0, 1):
        for n in SIZES:
            for stat in ("acc", "acc_std", "labels", "union", "gain", "new"):
                assert f"coop.{stat}.ff.n{n}.block{layer}" in metrics
        for stat in ("labels", "max", "diag"):
            assert f"bound.{stat}.ff.block{layer}" in metrics
    assert all(LAYERED_METRIC.match(k) for k in metrics if k != "coop.chance")
    stored = cooperation_run.load_from_run(result.run_id)
    assert stored["accuracy"].values.tolist() == result.dataset["accuracy"].values.tolist()
    names = {f.path for f in client.list_artifacts(result.run_id, "figures")}
    assert names == {
        f"figures/{s}_ff.png" for s in ("accuracy_curve", "label_counts", "node_bound")
    }


def test_accuracy_chance_and_union_against_the_stored_snp_tensor(in_store):
    ds, coop = in_store["ds"], in_store["result"].dataset
    acc = coop["accuracy"].values
    assert ((acc >= 0) & (acc <= 1)).all()
    assert coop.attrs["chance"] == 1 / LABELS == 1 / coop.sizes["label"]
    # every sample's accuracy is a multiple of 1 / (test samples)
    n_test = int(ds["count_label"].sum())
    np.testing.assert_allclose(acc * n_test, np.round(acc * n_test), atol=1e-6)
    assert coop["label_name"].values.tolist() == ds["label_name_true"].values.tolist()
    binary = snp.binarize(ds["snp_ff"], 0.3).values  # [layer, node, i, j]
    single = np.diagonal(binary, axis1=2, axis2=3)
    for li, layer in enumerate(coop["layer"].values):
        assert (coop["diagonal_labels"].sel(layer=layer).values == single[li].sum(1)).all()
        for si, size in enumerate(coop["size"].values):
            for d in range(coop.sizes["draw"]):
                members = coop["nodes"].values[li, si, d, :size]
                assert len(set(members.tolist())) == size and (members >= 0).all()
                literal = single[li, members].any(axis=0)
                assert (coop["union"].values[li, si, d] == literal).all()
                assert coop["union_labels"].values[li, si, d] <= LABELS
        assert (coop["nodes"].sel(layer=layer, size=NODES).values == np.arange(NODES)).all()
    gain = coop["recognised_labels"] - coop["union_labels"]
    assert (coop["cooperation"] == gain).all()


def test_the_bound_is_the_largest_and_smallest_weight_of_every_node(in_store):
    """Scalar node inputs without bias: exactly the labels of the largest and smallest weight."""
    coop = in_store["result"].dataset
    ckpt = tracking.load_checkpoint(in_store["train"])
    from statmech_nn.sites import resolve

    sites = resolve(ckpt.model, ["block0.ff", "block1.ff"])
    readouts = snp.load_readouts(in_store["snp"], sites, device="cpu")
    assert (coop["output_labels"] >= 1).all()
    for site in sites:
        w = readouts[site.name].fc.weight.detach().numpy()  # [L, N]
        expected = np.zeros((w.shape[1], LABELS), dtype=bool)
        expected[np.arange(w.shape[1]), w.argmax(0)] = True
        expected[np.arange(w.shape[1]), w.argmin(0)] = True
        assert (coop["can_output"].sel(layer=site.layer).values == expected).all()


def test_subsets_within_one_head_of_the_mha_site(in_store):
    result = cooperation_run.for_run(
        in_store["train"], kind="mha", layers=[1], draws=3, within_head=True, device="cpu"
    )
    coop = result.dataset
    width = NODES // tracking.load_checkpoint(in_store["train"]).model_config["num_heads"]
    assert coop["size"].values.tolist() == [1 << k for k in range(8) if 1 << k <= width]
    for si, size in enumerate(coop["size"].values):
        members = coop["nodes"].values[0, si, :, :size]
        assert all(len(set((row // width).tolist())) == 1 for row in members)
    assert coop["layer"].values.tolist() == [1] and coop.attrs["within_head"] == 1


def test_the_report_section(in_store):
    from mlflow.tracking import MlflowClient

    run = MlflowClient().get_run(in_store["result"].run_id)
    fragment = cooperation_section(run)
    assert fragment.startswith('<section id="cooperation-') and fragment.endswith("</section>")
    assert fragment.count('src="data:image/png;base64,') == 3
    assert fragment.count("<tr>") == 1 + 2 * len(SIZES) + 1 + 2  # heads and rows of two tables
    assert "Random guess 1/L = 0.167" in fragment


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--sizes", "1,x"], "comma-separated integers"),
        (["--sizes", "0,2"], ">= 1"),
        (["--sizes", "256"], "exceed the 128 nodes"),
        (["--draws", "0"], "--draws"),
        (["--theta", "1.5"], "outside (0, 1)"),
        (["--kind", "conv"], "no site kind 'conv'"),
        (["--layers", "5"], "no ff layers [5]"),
        (["--within-head"], "has no heads"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_no_run(in_store, capsys, argv, message):
    before = _runs()
    assert cli.main(["cooperation", in_store["train"], *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert _runs() == before


def test_for_run_refuses_options_before_looking_anything_up(in_store):
    with pytest.raises(ConfigError, match="features"):
        cooperation_run.for_run("no-such-run", features="bogus")
    with pytest.raises(ConfigError, match="domain"):
        cooperation_run.for_run("no-such-run", domain="positive")


def test_the_command_prints_a_table_and_the_run_id(in_store, capsys):
    argv = ["cooperation", in_store["snp"], "--sizes", "4", "--draws", "1", "--layers", "0"]
    assert cli.main([*argv, "--device", "cpu", "--no-progress"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[0].split() == ["layer", "A(4)", "bound", "|D_n|"]
    assert out[1].split()[0] == "0" and out[2] == "random guess 1/L = 0.167"
    assert tracking.get_run(out[-1]).data.tags[KIND_TAG] == KIND_COOPERATION
