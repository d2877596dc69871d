"""``statmech-nn demo --task text`` end to end on its smallest settings."""

from __future__ import annotations

import mlflow
import numpy as np
import pytest

from statmech_nn import demo, load_snp
from statmech_nn.cli import main
from statmech_nn.errors import ConfigError
from statmech_nn.report import run_tree


def test_demo_tasks_and_their_datasets():
    assert demo.preset_for("image") == "digits"
    assert demo.preset_for("text") == "textsynth"
    assert demo.PRESETS[demo.preset_for("text")]["model"] == "hf:bert-tiny-text"
    with pytest.raises(ConfigError, match="--task text"):
        demo.preset_for("image", "textsynth")
    with pytest.raises(ConfigError, match="textsynth"):
        demo.preset_for("text", "digits")


def test_a_wrong_dataset_for_the_task_is_one_line(workdir, capsys):
    assert main(["demo", "--task", "text", "--dataset", "digits"]) == 2
    err = capsys.readouterr().err.strip()
    assert "textsynth" in err and len(err.splitlines()) == 1
    assert not (workdir / "mlruns").exists()


@pytest.mark.slow
@pytest.mark.requires("transformers")
@pytest.mark.timeout(900)
def test_text_demo_runs_every_step(workdir, capsys):
    argv = ["demo", "--task", "text", "--epochs", "2", "--trials", "3", "--readout-epochs", "2"]
    argv += ["--limit-train", "160", "--limit-eval", "64", "--device", "cpu"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    train_run = out.strip().splitlines()[-1]
    for command in ("statmech-nn train --model hf:bert-tiny-text --dataset textsynth",
                    "statmech-nn snp ", "statmech-nn order ", "statmech-nn study andc ",
                    "statmech-nn report "):  # fmt: skip
        assert f"=== {command.split()[1]}: {command}" in out, command
    assert "=== cooperation" in out

    mlflow.set_tracking_uri(f"sqlite:///{workdir / 'mlruns' / 'mlflow.db'}")
    tree = run_tree(train_run)
    kinds = {child.kind: child for child in tree.children}
    assert {"snp", "order"} <= set(kinds)
    assert all(c.run.info.status == "FINISHED" for c in tree.children)
    ds = load_snp(train_run)
    assert ds.attrs["dataset"] == "textsynth" and ds.attrs["model"] == "hf:bert-tiny-text"
    assert set(ds.attrs["sites"]) == {"block0.mha", "block1.mha", "block0.ff", "block1.ff"}
    assert ds["head_snp_mha"].shape[1] == 4  # bert-tiny-text has 4 heads
    assert np.nanmax(ds["snp_ff"].values) <= 1.0 + 1e-6
    order_run = kinds["order"].run
    assert 0.0 <= order_run.data.metrics["order.Q.block1"] <= 1.0
    history = mlflow.tracking.MlflowClient().get_metric_history(
        order_run.info.run_id, "order.Q.block1"
    )
    assert sorted({m.step for m in history}) == [0, 2]
    assert [c for c in kinds["snp"].children if c.kind == "study"]
    report = next(line for line in out.splitlines() if line.strip().startswith("report: "))
    assert report.split("report: ", 1)[1].endswith(".html")
