"""Checkpoint retention: full resume states for the newest epochs, weights-only ones before."""

from __future__ import annotations

import json
import struct

import mlflow
import pytest
import torch
from _tiny import small_cct

from statmech_nn import recipes, tracking
from statmech_nn.errors import CheckpointError
from statmech_nn.train import CHECKPOINT_FORMAT, train


def resume_state(epoch: int, keep: int | None = 2) -> dict:
    """A full training state of a distinct model per epoch (weights, Adam-like moments)."""
    model = small_cct(epoch)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    config = {"model": "cct_2_3x2_32", "lr": 0.1, **({"keep_resume": keep} if keep else {})}
    return {
        "format": CHECKPOINT_FORMAT,
        "epoch": epoch,
        "model": weights,
        "model_config": model.config,
        "config": config,
        "optimizer": {"state": {0: {"exp_avg": torch.randn(3), "exp_avg_sq": torch.rand(3)}}},
        "scheduler": {"steps": epoch},
        "metrics": {"val_acc": 0.25 * epoch},
    }


def folder_of(run_id: str):
    return tracking.local_artifact_dir(run_id) / tracking.CHECKPOINT_DIR


def logged(epochs, keep: int | None = 2) -> tuple[str, dict[int, dict]]:
    tracking.init_store()
    states = {e: resume_state(e, keep) for e in epochs}
    with tracking.run("ck") as run:
        for e, state in states.items():
            tracking.log_checkpoint(run.info.run_id, state, e)
    return run.info.run_id, states


@pytest.mark.slow  # trains or runs a command end to end
def test_only_the_newest_full_states_stay_and_every_epoch_reads(workdir):
    run_id, states = logged(range(5))
    names = sorted(p.name for p in folder_of(run_id).iterdir() if p.name.startswith("epoch"))
    assert names == [f"epoch_{e:04d}.safetensors" for e in range(3)] + [
        "epoch_0003.pt",
        "epoch_0004.pt",
    ]
    assert tracking.list_checkpoints(run_id) == [0, 1, 2, 3, 4]
    for epoch, original in states.items():
        state, path = tracking.read_run_checkpoint(run_id, epoch)
        assert state.keys() >= {"model", "epoch", "config", "model_config", "metrics"}
        assert ("optimizer" in state) == (epoch >= 3), epoch
        assert state["epoch"] == epoch and state["config"] == original["config"]
        assert state["metrics"] == original["metrics"]
        assert state["model_config"] == original["model_config"]
        assert state["model"].keys() == original["model"].keys()
        for key, value in original["model"].items():
            assert torch.equal(state["model"][key], value), key
        loaded = tracking.load_checkpoint(run_id, epoch)  # order --over-checkpoints, snp --epoch
        assert loaded.epoch == epoch and loaded.path == str(path)
        x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
        reference = small_cct(epoch).eval()
        assert torch.equal(loaded.model(x), reference(x))


@pytest.mark.slow  # trains or runs a command end to end
def test_weights_only_files_are_plain_safetensors_with_json_configs(workdir):
    run_id, states = logged(range(3))
    raw = (folder_of(run_id) / "epoch_0000.safetensors").read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])  # the safetensors layout: u64 header size, JSON
    header = json.loads(raw[8 : 8 + length])
    meta = header.pop("__metadata__")
    assert set(header) == set(states[0]["model"])
    assert json.loads(meta["model_config"]) == states[0]["model_config"]
    assert meta["epoch"] == "0" and meta["format"] == CHECKPOINT_FORMAT
    assert b"\x80\x02" not in raw[:16] and not raw.startswith(b"PK")  # neither pickle nor zip


def test_keep_resume_is_read_from_the_run_config(workdir):
    run_id, _ = logged(range(4), keep=1)
    fulls = [p.name for p in folder_of(run_id).iterdir() if p.suffix == ".pt"]
    assert fulls == ["epoch_0003.pt"]
    run_id, _ = logged(range(4), keep=None)  # old configs without the field: default 2
    assert sorted(p.name for p in folder_of(run_id).iterdir() if p.suffix == ".pt") == [
        "epoch_0002.pt",
        "epoch_0003.pt",
    ]


def test_old_pt_history_and_non_training_states_are_left_as_they_are(workdir):
    tracking.init_store()
    with tracking.run("old") as run:
        for e in range(3):  # older runs: every epoch a full .pt, never rewritten by a reader
            tracking.save_checkpoint(
                resume_state(e), folder_of(run.info.run_id) / f"epoch_{e:04d}.pt"
            )
        plain = {
            "epoch": 9,
            "model": small_cct().state_dict(),
            "model_config": small_cct().config,
        }
        tracking.log_checkpoint(run.info.run_id, plain, 9)  # not resumable: prunes nothing
    run_id = run.info.run_id
    assert tracking.list_checkpoints(run_id) == [0, 1, 2, 9]
    assert all(p.suffix in (".pt", ".json") for p in folder_of(run_id).iterdir())
    assert "optimizer" in tracking.read_run_checkpoint(run_id, 0)[0]
    assert tracking.load_checkpoint(run_id, 1).epoch == 1


def test_an_interrupted_rewrite_reads_the_full_state_and_is_finished_later(workdir):
    run_id, states = logged(range(3))
    folder = folder_of(run_id)
    # As if killed after writing epoch 1's weights file but before removing its full state.
    tracking.save_weights(states[1], folder / "epoch_0001.safetensors")
    assert tracking.list_checkpoints(run_id) == [0, 1, 2]
    assert tracking.checkpoint_path(run_id, 1).suffix == ".pt"
    tracking.log_checkpoint(run_id, resume_state(3), 3)
    assert not (folder / "epoch_0001.pt").exists() and (folder / "epoch_0001.safetensors").exists()
    assert tracking.list_checkpoints(run_id) == [0, 1, 2, 3]
    assert tracking.retain_resume_states(folder, 1) == [2]


def test_a_truncated_weights_file_is_one_checkpoint_error(workdir):
    run_id, _ = logged(range(3))
    path = folder_of(run_id) / "epoch_0000.safetensors"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        tracking.load_checkpoint(run_id, 0)


TINY = dict(img_size=16, batch_size=32, limit_train=64, limit_eval=32, experiment="t",
            device="cpu", augment="basic", seed=3)  # fmt: skip


@pytest.mark.slow  # trains a tiny CCT for 4 + 4 epochs
def test_resume_after_retention_is_bit_exact(workdir):
    config = recipes.config("cpu-small", epochs=4, keep_resume=1, **TINY)
    reference = train(config)

    def stop_after_third(epoch, metrics):
        if epoch == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(config, on_epoch_end=stop_after_third)
    killed = mlflow.search_runs(experiment_names=["t"], filter_string="status = 'KILLED'")
    run_id = killed.run_id.item()
    folder = folder_of(run_id)
    assert sorted(p.name for p in folder.iterdir() if p.suffix == ".pt") == ["epoch_0003.pt"]
    assert train(resume_run_id=run_id) == run_id
    ours, theirs = (tracking.read_run_checkpoint(r)[0] for r in (run_id, reference))
    for key in theirs["model"]:
        assert torch.equal(ours["model"][key], theirs["model"][key]), key
    for index, moments in theirs["optimizer"]["state"].items():
        for name, value in moments.items():
            assert torch.equal(ours["optimizer"]["state"][index][name], value)
    for epoch in range(4):  # the pruned history is the same weights as the reference's
        a = tracking.read_run_checkpoint(run_id, epoch)[0]["model"]
        b = tracking.read_run_checkpoint(reference, epoch)[0]["model"]
        assert all(torch.equal(a[k], b[k]) for k in b)
    assert sorted(p.name for p in folder.iterdir() if p.suffix == ".pt") == ["epoch_0004.pt"]
