"""Training: schedule, what a run records, exact resume, recipes and the ``train`` command."""

from __future__ import annotations

import math

import mlflow
import pytest
import torch
from _tiny import interrupted_and_resumed

from statmech_nn import cli, models, recipes, tracking
from statmech_nn.data import data_for_config
from statmech_nn.errors import UnknownNameError
from statmech_nn.train import Schedule, TrainConfig, lr_at, train

TINY = dict(
    img_size=16, batch_size=32, limit_train=128, limit_eval=64, experiment="t", device="cpu"
)


def tiny(**kw) -> TrainConfig:
    return recipes.config("cpu-small", **{**TINY, **kw})


def final_state(run_id: str) -> dict:
    return tracking.read_run_checkpoint(run_id)[0]


def assert_same_tensors(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_learning_rate_schedule_hand_computed():
    c = TrainConfig(lr=1.0, warmup_lr=0.0, warmup_epochs=2, epochs=10, min_lr=0.0)
    assert lr_at(c, 0) == 0.0
    assert lr_at(c, 1) == pytest.approx(0.5)
    assert lr_at(c, 2) == pytest.approx(1.0)
    assert lr_at(c, 6) == pytest.approx(0.5)  # half-way through the cosine
    assert lr_at(c, 4) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert lr_at(c, 10) == pytest.approx(0.0)
    cool = TrainConfig(lr=1.0, warmup_lr=0.0, warmup_epochs=0, epochs=10, min_lr=0.1,
                       cooldown_epochs=2)  # fmt: skip
    assert lr_at(cool, 4) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_at(cool, 8) == pytest.approx(0.1) and lr_at(cool, 9.5) == pytest.approx(0.1)

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.0)
    per_iter, per_epoch = (
        Schedule(c, opt, steps=4),
        Schedule(TrainConfig(**{**c.to_dict(), "schedule_per": "epoch"}), opt, steps=4),
    )
    for s in (per_iter, per_epoch):
        s.step()
        s.step()
    assert per_iter.apply() == pytest.approx(0.25)  # epoch 0.5 of a 2-epoch warm-up
    assert per_epoch.apply() == 0.0 and opt.param_groups[0]["lr"] == 0.0


@pytest.mark.slow  # trains a CCT end to end
def test_a_run_records_config_metrics_dataset_and_checkpoints(workdir):
    config = tiny(epochs=2, limit_eval=None, seed=5)
    run_id = train(config)
    run = tracking.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert set(run.data.metrics) == {
        "train_loss", "train_acc", "val_loss", "val_acc", "test_acc", "lr", "images_per_s"
    }  # fmt: skip
    client = mlflow.MlflowClient()
    assert [m.step for m in client.get_metric_history(run_id, "val_acc")] == [1, 2]
    for name in TrainConfig.__dataclass_fields__:
        assert name in run.data.params, name
    assert run.data.params["seed"] == "5" and run.data.params["num_classes"] == "10"
    assert run.data.params["img_size"] == "16" and run.data.params["recipe"] == "cpu-small"
    assert run.data.tags["model"] == "cct_2_3x2_32" and run.data.tags["dataset"] == "digits"
    assert [d.dataset.name for d in run.inputs.dataset_inputs] == ["digits"]
    assert tracking.list_checkpoints(run_id) == [0, 1, 2]

    # Epoch 0 holds the untrained weights: the model the seed builds.
    torch.manual_seed(5)
    fresh = models.create("cct_2_3x2_32", num_classes=10, img_size=16)
    assert_same_tensors(final_state_at(run_id, 0)["model"], fresh.state_dict())

    # The logged test accuracy is that of the last checkpoint on the run's test split.
    loaded = tracking.load_checkpoint(run_id)
    splits = data_for_config(loaded.config)
    correct = 0
    with torch.no_grad():
        for i in range(len(splits.test)):
            x, y = splits.test[i]
            correct += int(loaded.model(x[None]).argmax() == y)
    assert correct / len(splits.test) == pytest.approx(run.data.metrics["test_acc"], abs=1e-9)
    assert loaded.config["model_config"] == loaded.model.config


def final_state_at(run_id: str, epoch: int) -> dict:
    return tracking.read_run_checkpoint(run_id, epoch)[0]


@pytest.mark.slow  # trains a CCT end to end
def test_resume_after_an_interruption_gives_the_uninterrupted_weights(workdir):
    # "basic" augmentation, dropout and stochastic depth all draw random numbers: the resumed run
    # must replay them exactly.
    run_id, reference = interrupted_and_resumed(tiny(epochs=3, augment="basic", seed=1), "t")
    assert tracking.get_run(run_id).info.status == "FINISHED"
    assert tracking.list_checkpoints(run_id) == [0, 1, 2, 3]
    ours, theirs = final_state(run_id), final_state(reference)
    assert_same_tensors(ours["model"], theirs["model"])
    assert_same_tensors(ours["optimizer"]["state"][0], theirs["optimizer"]["state"][0])
    assert not torch.equal(ours["model"]["classifier.fc.weight"],
                           final_state_at(run_id, 1)["model"]["classifier.fc.weight"])  # fmt: skip
    client = mlflow.MlflowClient()
    for name in ("train_loss", "val_loss"):
        ref = {m.step: m.value for m in client.get_metric_history(reference, name)}
        got = {m.step: m.value for m in client.get_metric_history(run_id, name)}
        assert got == ref

    # The seed matters (the equality above is not vacuous) ...
    other = train(tiny(epochs=3, augment="basic", seed=2))
    assert not torch.equal(
        final_state(other)["model"]["classifier.fc.weight"], theirs["model"]["classifier.fc.weight"]
    )
    # ... and resuming a finished run changes nothing.
    assert train(resume_run_id=reference) == reference
    assert tracking.list_checkpoints(reference) == [0, 1, 2, 3]
    assert_same_tensors(final_state(reference)["model"], theirs["model"])


@pytest.mark.slow  # trains a CCT end to end
def test_mixup_cutmix_smoothing_clipping_and_bf16_train(workdir):
    run_id = train(tiny(epochs=1, limit_train=64, augment="cct", grad_clip=1.0, bf16=True))
    run = tracking.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["label_smoothing"] == "0.0"  # cpu-small sets it; the preset's is 0.1
    assert math.isfinite(run.data.metrics["train_loss"])
    assert all(torch.isfinite(v).all() for v in final_state(run_id)["model"].values())


def test_recipes_hold_the_reference_values():
    c = recipes.config("cct-cifar100")
    assert (c.model, c.dataset, c.epochs, c.batch_size) == ("cct_7_3x1_32", "cifar100", 300, 128)
    assert (c.lr, c.weight_decay, c.warmup_epochs, c.warmup_lr, c.min_lr) == (
        6e-4, 0.06, 10, 1e-6, 1e-5
    )  # fmt: skip
    assert (c.label_smoothing, c.augment, c.amp, c.schedule_per) == (0.1, "cct", True, "epoch")
    assert recipes.config("cct-flowers102").positional_embedding == "sine"
    assert recipes.config("cct-cifar10").lr == 5.5e-4
    small = recipes.config()
    assert small.recipe == "cpu-small" and small.dataset == "digits" and small.augment == "none"
    assert recipes.config("cct-cifar100", epochs=3, lr=None).epochs == 3
    assert recipes.config("cct-cifar100", lr=None).lr == 6e-4
    with pytest.raises(UnknownNameError, match="known: cct-cifar10, cct-cifar100"):
        recipes.config("cct-imagenet")
    with pytest.raises(UnknownNameError, match="unknown training setting"):
        recipes.config(learning_rate=0.1)


CLI_TINY = ["--img-size", "16", "--batch-size", "32", "--limit-train", "64", "--limit-eval", "32",
            "--device", "cpu"]  # fmt: skip


@pytest.mark.slow  # trains or runs a command end to end
def test_cli_trains_and_prints_the_run_id_last(workdir, capsys):
    argv = ["train", "--model", "cct_2_3x2_32", "--dataset", "digits", "--epochs", "1"]
    assert cli.main(argv + CLI_TINY + ["--experiment", "cli", "--seed", "4"]) == 0
    run_id = capsys.readouterr().out.strip().splitlines()[-1]
    run = tracking.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["epochs"] == "1" and run.data.params["seed"] == "4"
    assert run.data.params["batch_size"] == "32" and run.data.params["limit_train"] == "64"
    assert mlflow.get_experiment(run.info.experiment_id).name == "cli"

    assert cli.main(["train", "--resume", run_id, "--epochs", "5"]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip().splitlines()[-1] == run_id
    assert "ignoring --epochs" in captured.err
    assert tracking.list_checkpoints(run_id) == [0, 1]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--model", "cct_2_3x2_3"], "unknown model 'cct_2_3x2_3'; did you mean cct_2_3x2_32"),
        (["--dataset", "digitz"], "unknown dataset 'digitz'"),
        (["--resume", "0" * 32], "no MLflow run '00000000000000000000000000000000'"),
    ],
)
def test_cli_bad_input_is_one_line_and_creates_nothing(workdir, capsys, argv, message):
    code = cli.main(["train", *argv, *([] if "--resume" in argv else CLI_TINY)])
    captured = capsys.readouterr()
    assert code != 0
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], captured.err
    assert "Traceback" not in captured.err and captured.out == ""
    if "--resume" not in argv:
        assert not (workdir / "mlruns").exists()


def test_cli_help_explains_usage(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["train", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for needle in ("--recipe", "cct-cifar100", "--resume RUN_ID", "torchrun", "mlflow ui"):
        assert needle in text


@pytest.mark.slow  # trains a CCT end to end
def test_resume_skips_a_corrupt_newest_checkpoint(workdir, caplog):
    run_id = train(tiny(epochs=2, limit_train=64))
    good = final_state(run_id)["model"]
    path = tracking.checkpoint_path(run_id, 2)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])  # e.g. a copy cut short outside our control
    assert train(resume_run_id=run_id) == run_id
    assert "skipping unreadable checkpoint of epoch 2" in caplog.text
    assert_same_tensors(final_state(run_id)["model"], good)
