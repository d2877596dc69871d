"""End to end on the CLI: a tiny ViT of each library trained on digits, then snp and order."""

from __future__ import annotations

import pytest


@pytest.mark.slow
@pytest.mark.parametrize(
    "name",
    [
        pytest.param("hf:vit-tiny-digits", marks=pytest.mark.requires("transformers")),
        pytest.param("timm:vit-tiny-digits", marks=pytest.mark.requires("timm")),
        "torchvision:vit-tiny-digits",
    ],
)
def test_tiny_vit_trains_and_is_analysed_by_heads(name, workdir, capsys, child_runs):
    from statmech_nn import cli, tracking
    from statmech_nn.train import TrainConfig, train

    config = TrainConfig(
        model=name,
        dataset="digits",
        img_size=16,
        epochs=6,
        batch_size=32,
        lr=3e-3,
        warmup_epochs=0.5,
        limit_train=640,
        limit_eval=200,
        device="cpu",
        amp=False,
    )
    run_id = train(config)
    loaded = tracking.load_checkpoint(run_id)
    assert loaded.model_config["name"] == name
    args = ["snp", run_id, "--sites", "block1.mha,block1.ff", "--readout-epochs", "10"]
    args += ["--readout-lr", "0.05"]
    args += ["--limit-train", "640", "--limit-eval", "200", "--device", "cpu", "--no-progress"]
    assert cli.main(args) == 0, capsys.readouterr().err
    (snp_run,) = child_runs(run_id, "snp")
    accuracy = snp_run.data.metrics["acc.readout.ff.block1"]
    assert accuracy > 0.2  # chance is 0.1 on the 10 digits
    assert snp_run.data.metrics["acc.readout.mha.block1"] > 0.2
    assert cli.main(["order", run_id, "--null-permutations", "20"]) == 0, capsys.readouterr().err
    (order_run,) = child_runs(run_id, "order")
    metrics = order_run.data.metrics
    assert 0.0 <= metrics["order.Q.block1"] <= 1.0
    assert 0.0 <= metrics["order.Q_null_mean.block1"] <= 1.0
    assert "order.Q_pvalue.block1" in metrics
