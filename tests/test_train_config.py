"""Every training setting that cannot work is one line, exit 2, before any run or store exists."""

from __future__ import annotations

import pytest
import torch

from statmech_nn import cli
from statmech_nn.errors import ConfigError
from statmech_nn.train import TrainConfig

TINY = ["--img-size", "16", "--batch-size", "32", "--limit-train", "32", "--limit-eval", "16",
        "--device", "cpu", "--epochs", "1"]  # fmt: skip

BAD = [
    (["--epochs", "0"], "epochs must be a whole number >= 1, got 0"),
    (["--epochs", "-1"], "epochs must be a whole number >= 1, got -1"),
    (["--batch-size", "0"], "batch_size must be a whole number >= 1"),
    (["--lr", "nan"], "lr must be a finite number > 0, got nan"),
    (["--lr", "0"], "lr must be a finite number > 0"),
    (["--lr", "inf"], "lr must be a finite number > 0"),
    (["--workers", "-1"], "workers must be a whole number >= 0"),
    (["--label-smoothing", "2"], "label_smoothing must be a finite number in [0, 1)"),
    (["--label-smoothing", "1"], "label_smoothing must be a finite number in [0, 1)"),
    (["--label-smoothing", "-0.1"], "label_smoothing must be a finite number in [0, 1)"),
    (["--weight-decay", "-1"], "weight_decay must be a finite number >= 0"),
    (["--warmup-epochs", "-1"], "warmup_epochs must be a finite number >= 0"),
    (["--min-lr", "nan"], "min_lr must be a finite number >= 0"),
    (["--grad-clip", "-1"], "grad_clip must be a finite number >= 0"),
    (["--val-fraction", "1"], "val_fraction must be a finite number in [0, 1)"),
    (["--checkpoint-every", "0"], "checkpoint_every must be a whole number >= 1"),
    (["--limit-train", "0"], "limit_train must be a whole number >= 1"),
    (["--limit-eval", "-5"], "limit_eval must be a whole number >= 1"),
    (["--img-size", "0"], "img_size must be a whole number >= 1"),
    (["--seed", "-1"], "seed must be a whole number >= 0"),
    (["--attention-dropout", "1.5"], "attention_dropout must be a finite number in [0, 1)"),
    (["--stochastic-depth", "-0.5"], "stochastic_depth must be a finite number in [0, 1)"),
    (["--model-option", "num_heads=5"], "cannot be built with num_heads=5"),
    (["--model-option", "embedding_dim=-4"], "embedding_dim must be a positive integer"),
]


@pytest.mark.parametrize(("argv", "message"), BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_training_options_are_one_line_and_create_nothing(workdir, capsys, argv, message):
    code = cli.main(["train", *TINY, *argv])
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2, captured.err
    assert len(lines) == 1 and message in lines[0], captured.err
    assert lines[0].startswith("statmech-nn train: error: ") and "Traceback" not in captured.err
    assert captured.out == ""
    assert not (workdir / "mlruns").exists()  # no store, hence no run


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_cuda_without_a_gpu_is_one_line_and_creates_nothing(workdir, capsys):
    argv = [a for a in TINY if a not in ("--device", "cpu")]
    assert cli.main(["train", *argv, "--device", "cuda"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "torch sees no CUDA device" in lines[0]
    assert not (workdir / "mlruns").exists()


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"schedule_per": "week"}, "schedule_per must be one of iteration, epoch"),
        ({"device": "gpu"}, "device 'gpu' is not a device torch knows"),
        ({"epochs": 2.5}, "epochs must be a whole number"),
        ({"epochs": True}, "epochs must be a whole number"),
        ({"amp": "yes"}, "amp must be true or false"),
        ({"lr": "0.1"}, "lr must be a finite number > 0"),
    ],
)
def test_the_python_api_raises_the_same_config_error(values, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**values)


def test_a_resume_without_a_run_or_a_config_is_a_config_error():
    from statmech_nn.train import train

    with pytest.raises(ConfigError, match="give a TrainConfig, or a run id"):
        train()


def test_good_values_at_the_edges_are_accepted():
    TrainConfig(epochs=1, batch_size=1, workers=0, label_smoothing=0.0, grad_clip=0.0,
                val_fraction=0.0, warmup_epochs=0, min_lr=0.0, device="cuda:1", seed=0)  # fmt: skip
