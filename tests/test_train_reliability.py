"""Training that is killed, diverges or runs distributed: nothing lost, nothing corrupt."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from _tiny import subprocess_env

from statmech_nn import cli, processes, recipes, tracking
from statmech_nn.errors import ConfigError, TrainingDiverged
from statmech_nn.train import train

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("_train_worker.py")
# 128 samples / batch 32 = 4 optimiser steps per epoch.
SETTINGS = dict(img_size=16, epochs=3, batch_size=32, limit_train=128, limit_eval=32,
                augment="basic", seed=3, device="cpu")  # fmt: skip
ARGS = ["train", "--model", "cct_2_3x2_32", "--dataset", "digits", "--img-size", "16",
        "--epochs", "3", "--batch-size", "32", "--limit-train", "128", "--limit-eval", "32",
        "--augment", "basic", "--seed", "3", "--device", "cpu"]  # fmt: skip


def _env() -> dict[str, str]:
    return subprocess_env()


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, torch.Tensor]:
    """Final weights of the uninterrupted run (its own throw-away store)."""
    store = tmp_path_factory.mktemp("reference") / "mlflow.db"
    run_id = train(recipes.config("cpu-small", **SETTINGS), tracking_uri=f"sqlite:///{store}")
    return tracking.read_run_checkpoint(run_id)[0]["model"]


def _only_run(status: str) -> str:
    import mlflow

    runs = mlflow.search_runs(search_all_experiments=True)
    assert list(runs.status) == [status]
    return runs.run_id.item()


def _resume(run_id: str, capsys) -> None:
    assert cli.main(["train", "--resume", run_id]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == run_id


def _assert_equal_weights(run_id: str, reference: dict[str, torch.Tensor]) -> None:
    final = tracking.read_run_checkpoint(run_id)[0]["model"]
    assert final.keys() == reference.keys()
    for key, value in reference.items():
        assert torch.equal(final[key], value), key


@pytest.mark.slow  # trains in a killed subprocess, resumes, and compares with a reference run
@pytest.mark.timeout(300)
def test_sigkill_mid_epoch_then_resume_gives_the_uninterrupted_weights(workdir, reference, capsys):
    tracking.init_store()
    proc = subprocess.run(
        [sys.executable, str(WORKER), "kill-at-step", "6", "--", *ARGS],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=280,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    run_id = _only_run("RUNNING")  # killed: nobody could mark it
    assert tracking.list_checkpoints(run_id) == [0, 1]  # died in epoch 2 (step 6 of 4 per epoch)
    assert tracking.sweep_dead_runs() == [run_id]
    assert tracking.ENDED_BY_TAG in tracking.get_run(run_id).data.tags
    _resume(run_id, capsys)
    assert tracking.get_run(run_id).info.status == "FINISHED"
    assert tracking.ENDED_BY_TAG not in tracking.get_run(run_id).data.tags  # the sweep's mark
    assert tracking.list_checkpoints(run_id) == [0, 1, 2, 3]
    _assert_equal_weights(run_id, reference)


@pytest.mark.slow  # trains in a killed subprocess, resumes, and compares with a reference run
@pytest.mark.timeout(300)
def test_kill_while_writing_a_checkpoint_leaves_the_previous_one_usable(workdir, reference, capsys):
    tracking.init_store()
    proc = subprocess.run(
        [sys.executable, str(WORKER), "kill-in-write", "2", "--", *ARGS],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=280,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    run_id = _only_run("RUNNING")
    folder = tracking.local_artifact_dir(run_id) / tracking.CHECKPOINT_DIR
    partial = [p for p in folder.iterdir() if p.name.startswith(".epoch_0002.pt.")]
    assert len(partial) == 1, "the kill did not land inside the write"
    with pytest.raises(Exception):  # noqa: B017 - the half-written bytes are not a checkpoint
        torch.load(partial[0], weights_only=True)
    assert not (folder / "epoch_0002.pt").exists()
    assert tracking.list_checkpoints(run_id) == [0, 1]
    assert tracking.load_checkpoint(run_id).epoch == 1
    _resume(run_id, capsys)
    assert tracking.list_checkpoints(run_id) == [0, 1, 2, 3]
    assert not partial[0].exists()  # the killed writer's hidden temporary is cleaned up
    assert [p.name for p in folder.iterdir() if p.name.startswith(".")] == []
    _assert_equal_weights(run_id, reference)


def _metric_steps(run_id: str) -> dict[str, list[int]]:
    """Every metric of ``run_id`` and the steps of its logged values, in logging order."""
    import mlflow

    client = mlflow.MlflowClient()
    keys = client.get_run(run_id).data.metrics
    return {key: [m.step for m in client.get_metric_history(run_id, key)] for key in keys}


# name: (worker mode, epoch, extra CLI args). 3 epochs, checkpoints every epoch unless given.
KILLS = {
    "after the metrics, before the checkpoint": ("kill-after-metrics", 2, []),
    "after the checkpoint, before the metrics": ("kill-after-checkpoint", 2, []),
    "after the metrics of an epoch without checkpoint": (
        "kill-after-metrics", 1, ["--checkpoint-every", "2"]),
    "after the last checkpoint": ("kill-after-checkpoint", 3, []),
}  # fmt: skip


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("case", list(KILLS))
def test_sigkill_around_the_epoch_records_then_resume_logs_every_step_once(
    workdir, reference, capsys, case
):
    mode, epoch, extra = KILLS[case]
    tracking.init_store()
    proc = subprocess.run(
        [sys.executable, str(WORKER), mode, str(epoch), "--", *ARGS, *extra],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=280,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    run_id = _only_run("RUNNING")
    _resume(run_id, capsys)
    steps = _metric_steps(run_id)
    assert {"train_loss", "train_acc", "val_loss", "val_acc", "test_acc", "lr"} <= set(steps)
    for key, logged in steps.items():
        assert sorted(logged) == [1, 2, 3], (key, logged)  # each epoch once: none lost, none twice
    assert tracking.get_run(run_id).info.status == "FINISHED"
    _assert_equal_weights(run_id, reference)


def _trained_run(epochs: int = 1) -> str:
    return train(recipes.config("cpu-small", **{**SETTINGS, "epochs": epochs}))


def _pretend_running(run_id: str, mark: dict) -> None:
    client = tracking.uris.client()
    client.update_run(run_id, status="RUNNING")
    client.set_tag(run_id, tracking.PROCESS_TAG, json.dumps(mark))


def _one_error_line(argv: list[str], capsys) -> str:
    capsys.readouterr()  # what training printed before is not the command's output
    code = cli.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    return err[0]


@pytest.mark.slow  # trains or runs a command end to end
def test_resuming_a_run_whose_process_lives_on_this_host_is_refused(workdir, capsys):
    run_id = _trained_run()
    me = processes.identity()
    _pretend_running(run_id, me)
    with pytest.raises(ConfigError, match="still training"):
        train(resume_run_id=run_id)
    line = _one_error_line(["train", "--resume", run_id, "--force-resume"], capsys)
    assert "still training" in line and str(me["pid"]) in line
    assert tracking.get_run(run_id).info.status == "RUNNING"  # untouched
    assert tracking.list_checkpoints(run_id) == [0, 1]


@pytest.mark.slow  # trains or runs a command end to end
def test_resuming_a_run_running_on_another_host_needs_force_resume(workdir, capsys):
    run_id = _trained_run()
    _pretend_running(run_id, {"host": "elsewhere.invalid", "pid": 1, "start": 1})
    line = _one_error_line(["train", "--resume", run_id], capsys)
    assert "elsewhere.invalid" in line and "--force-resume" in line
    assert tracking.get_run(run_id).info.status == "RUNNING"
    assert cli.main(["train", "--resume", run_id, "--force-resume"]) == 0
    assert tracking.get_run(run_id).info.status == "FINISHED"


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_a_second_resume_of_a_run_still_training_is_refused(workdir, capsys):
    tracking.init_store()
    signals = workdir / "signals"
    signals.mkdir()
    proc = subprocess.Popen(
        [sys.executable, str(WORKER), "pause-after-checkpoint", "1", str(signals), "--", *ARGS],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    try:
        while not (signals / "reached").exists():
            assert proc.poll() is None, proc.communicate()[1][-2000:]
            time.sleep(0.2)
        run_id = _only_run("RUNNING")
        line = _one_error_line(["train", "--resume", run_id], capsys)
        assert "still training" in line and str(proc.pid) in line
        assert tracking.list_checkpoints(run_id) == [0, 1]
        (signals / "go").touch()
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert tracking.get_run(run_id).info.status == "FINISHED"
    assert tracking.list_checkpoints(run_id) == [0, 1, 2, 3]


@pytest.mark.slow  # trains two epochs
def test_non_finite_loss_fails_the_run_and_keeps_the_last_good_checkpoint(workdir, capsys):
    # Epoch 1 runs at the tiny warm-up rate; epoch 2 at lr 1e30 overflows to inf / NaN.
    config = recipes.config(
        "cpu-small",
        **{**SETTINGS, "lr": 1e30, "warmup_lr": 1e-7, "warmup_epochs": 1, "schedule_per": "epoch"},
    )
    with pytest.raises(TrainingDiverged, match="non-finite .* in epoch 2"):
        train(config)
    run_id = _only_run("FAILED")
    assert tracking.list_checkpoints(run_id) == [0, 1]
    good = tracking.load_checkpoint(run_id)
    assert good.epoch == 1
    assert all(torch.isfinite(p).all() for p in good.model.parameters())
    with torch.no_grad():
        assert torch.isfinite(good.model(torch.randn(2, 3, 16, 16))).all()

    code = cli.main([*ARGS, "--lr", "1e30", "--warmup-epochs", "0", "--experiment", "cli"])
    err = capsys.readouterr().err.strip().splitlines()  # epoch 1's progress line, then the error
    errors = [line for line in err if "error:" in line]
    assert code != 0 and errors == err[-1:] and "non-finite" in err[-1], err


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_ddp_two_cpu_processes(workdir):
    uri = tracking.init_store()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "statmech_nn", *ARGS[:5], "--epochs", "2", "--img-size", "16",
           "--batch-size", "16", "--limit-train", "128", "--limit-eval", "32",
           "--device", "cpu", "--tracking-uri", uri]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=380)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_id = proc.stdout.strip().splitlines()[-1]
    assert proc.stdout.split().count(run_id) == 1  # only rank 0 prints it
    run = tracking.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["world_size"] == "2"
    assert tracking.list_checkpoints(run_id) == [0, 1, 2]
    import mlflow

    history = mlflow.MlflowClient().get_metric_history(run_id, "train_acc")
    assert [m.step for m in history] == [1, 2]
    assert all(math.isfinite(m.value) for m in history)
    # Each rank steps through its own shard: 64 samples at batch 16.
    assert tracking.read_run_checkpoint(run_id)[0]["scheduler"]["steps_per_epoch"] == 4
    assert len(mlflow.search_runs(search_all_experiments=True)) == 1
