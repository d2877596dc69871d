"""End to end on the CLI: a tiny ViT of each library trained on digits, then snp and order."""

from __future__ import annotations

import pytest
from _tiny import interrupted_and_resumed


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
    from statmech_nn.train import train

    config = _config(name, epochs=6, limit_train=640, limit_eval=200, experiment="statmech-nn")
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


def _config(model: str, **overrides):
    from statmech_nn.train import TrainConfig

    values = dict(
        model=model,
        dataset="digits",
        img_size=16,
        epochs=2,
        batch_size=32,
        lr=3e-3,
        warmup_epochs=0.5,
        limit_train=128,
        limit_eval=64,
        device="cpu",
        amp=False,
        experiment="foreign",
    )
    return TrainConfig(**{**values, **overrides})


def _weights(run_id: str, epoch: int | None = None) -> dict:
    from statmech_nn import tracking

    return tracking.read_run_checkpoint(run_id, epoch)[0]["model"]


@pytest.mark.slow
@pytest.mark.requires("transformers")
def test_fine_tuning_a_local_hugging_face_directory_starts_from_its_weights(
    workdir, capsys, child_runs
):
    """``train --model hf:DIR`` starts from DIR's weights; its checkpoints rebuild without DIR."""
    import torch

    from statmech_nn import cli, models
    from statmech_nn.train import train

    torch.manual_seed(11)
    net = models.create("hf:vit-tiny-digits", num_classes=10, img_size=16).net
    with torch.no_grad():  # weights no fresh init gives, so starting from them is no accident
        for param in net.parameters():
            param.add_(torch.randn_like(param))
    directory = workdir / "elsewhere"
    net.save_pretrained(str(directory))
    saved = {key: value.clone() for key, value in net.state_dict().items()}
    run_id = train(_config(f"hf:{directory}", epochs=1))
    untrained, trained = _weights(run_id, 0), _weights(run_id, 1)
    assert untrained.keys() == {"net." + key for key in saved}
    for key, value in saved.items():
        assert torch.equal(untrained["net." + key], value), key
    assert any(not torch.equal(trained["net." + k], v) for k, v in saved.items())
    directory.rename(workdir / "moved")  # the run's checkpoints need no directory
    args = ["snp", run_id, "--sites", "block1.mha", "--readout-epochs", "1"]
    args += ["--limit-train", "64", "--limit-eval", "32", "--device", "cpu", "--no-progress"]
    assert cli.main(args) == 0, capsys.readouterr().err
    assert len(child_runs(run_id, "snp")) == 1


@pytest.mark.slow
@pytest.mark.parametrize(
    "name",
    [
        pytest.param("timm:vit-tiny-digits", marks=pytest.mark.requires("timm")),
        "torchvision:vit-tiny-digits",
    ],
)
def test_resumed_foreign_training_gives_the_uninterrupted_weights(name, workdir):
    """Stopped after epoch 1 of 2 and resumed, a run ends with the uninterrupted run's weights."""
    import torch

    from statmech_nn import tracking

    run_id, reference = interrupted_and_resumed(_config(name), "foreign")
    assert tracking.list_checkpoints(run_id) == [0, 1, 2]
    ours, theirs = _weights(run_id), _weights(reference)
    assert ours.keys() == theirs.keys()
    for key in ours:
        assert torch.equal(ours[key], theirs[key]), key
    assert any(not torch.equal(ours[k], v) for k, v in _weights(run_id, 1).items())
