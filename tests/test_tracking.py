"""MLflow store, run status, atomic checkpoints and their loading (statmech_nn.tracking)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import mlflow
import pytest
import torch

from statmech_nn import models, tracking
from statmech_nn.errors import CheckpointError, TrackingError

WORKER = Path(__file__).with_name("_train_worker.py")


def tiny_model(name: str = "cct_2_3x2_32", **kw):
    torch.manual_seed(0)
    return models.create(name, num_classes=4, img_size=16, embedding_dim=32, **kw)


def state_of(model, epoch: int = 1, **config) -> dict:
    return {
        "epoch": epoch,
        "model": model.state_dict(),
        "model_config": model.config,
        "config": {"model": model.config["name"], "lr": 0.1, **config},
    }


def artifact_dir(run_id: str) -> Path:
    return tracking.local_artifact_dir(run_id) / tracking.CHECKPOINT_DIR


def test_default_store_is_under_the_working_directory(workdir, monkeypatch):
    assert tracking.default_tracking_uri() == f"sqlite:///{(workdir / 'mlruns/mlflow.db')}"
    uri = tracking.init_store()
    assert uri == tracking.default_tracking_uri()
    assert (workdir / "mlruns" / "mlflow.db").is_file()
    assert "MLFLOW_TRACKING_URI" not in os.environ  # mlflow's export is undone
    with tracking.run("e") as run:
        pass
    root = (workdir / "mlruns" / "artifacts").resolve()
    assert tracking.local_artifact_dir(run.info.run_id).is_relative_to(root)
    other = f"sqlite:///{workdir / 'other' / 'x.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", other)
    assert tracking.resolve_uri() == other
    assert tracking.resolve_uri("sqlite:///explicit.db") == "sqlite:///explicit.db"
    assert tracking.init_store() == other
    assert (workdir / "other" / "x.db").is_file()
    assert tracking.artifact_root(other) == (workdir / "other" / "artifacts").as_uri()


def test_a_second_store_starts_empty_with_its_own_default_experiment(workdir):
    tracking.init_store()
    with tracking.run("e"):
        pass
    (workdir / "b").mkdir()
    os.chdir(workdir / "b")
    tracking.init_store()
    client = mlflow.MlflowClient()
    assert [e.name for e in client.search_experiments()] == ["Default"]
    default = client.get_experiment("0").artifact_location
    assert default == (workdir / "b" / "mlruns" / "artifacts" / "0").as_uri()


def test_checkpoint_round_trip_rebuilds_the_same_function(workdir):
    tracking.init_store()
    model = tiny_model()
    with torch.no_grad():  # weights unlike a fresh init, so equal outputs mean "loaded"
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    with tracking.run("e") as run:
        tracking.log_checkpoint(run.info.run_id, state_of(tiny_model(), 0), 0)
        path = tracking.log_checkpoint(run.info.run_id, state_of(model, 3, seed=7), 3)
    run_id = run.info.run_id
    assert path == "checkpoints/epoch_0003.pt"
    assert tracking.list_checkpoints(run_id) == [0, 3]
    loaded = tracking.load_checkpoint(run_id)
    assert loaded.epoch == 3 and loaded.run_id == run_id
    assert loaded.config["seed"] == 7
    assert not loaded.model.training
    x = torch.randn(5, 3, 16, 16)
    model.eval()
    with torch.no_grad():
        assert torch.equal(loaded.model(x), model(x))
    first = tracking.load_checkpoint(run_id, epoch=0)
    with torch.no_grad():
        assert not torch.equal(first.model(x), model(x))
    stored = json.loads((artifact_dir(run_id) / "config.json").read_text())
    assert stored == state_of(model, 3, seed=7)["config"]
    with pytest.raises(CheckpointError, match="epochs \\[0, 3\\]"):
        tracking.load_checkpoint(run_id, epoch=2)


@pytest.mark.slow  # trains or runs a command end to end
def test_run_status_follows_the_outcome(workdir):
    tracking.init_store()
    with tracking.run("e") as ok:
        mlflow.log_metric("x", 1.0)
    with pytest.raises(RuntimeError, match="boom"), tracking.run("e") as bad:
        raise RuntimeError("boom")
    with pytest.raises(KeyboardInterrupt), tracking.run("e") as stopped:
        raise KeyboardInterrupt
    status = {r: tracking.get_run(r.info.run_id).info.status for r in (ok, bad, stopped)}
    assert list(status.values()) == ["FINISHED", "FAILED", "KILLED"]
    assert mlflow.active_run() is None
    with tracking.run("e", resume_run_id=bad.info.run_id) as again:
        assert again.info.run_id == bad.info.run_id
        assert tracking.get_run(bad.info.run_id).info.status == "RUNNING"
    assert tracking.get_run(bad.info.run_id).info.status == "FINISHED"


def test_child_runs_nest_under_their_parent_even_inside_another_run(workdir):
    tracking.init_store()
    with tracking.run("parents") as parent:
        pass
    with tracking.run("elsewhere") as other:
        with tracking.child_run(parent.info.run_id, "snp") as child:
            mlflow.log_metric("y", 2.0)
        assert mlflow.active_run().info.run_id == other.info.run_id
    got = tracking.get_run(child.info.run_id)
    assert got.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert got.info.experiment_id == parent.info.experiment_id
    assert got.info.run_name == "snp" and got.data.metrics == {"y": 2.0}
    assert got.info.status == "FINISHED"


@pytest.mark.slow  # trains or runs a command end to end
def test_unknown_run_and_run_without_checkpoints(workdir):
    tracking.init_store()
    with pytest.raises(TrackingError, match="no MLflow run 'f+' in sqlite:"):
        tracking.load_checkpoint("f" * 32)
    with pytest.raises(TrackingError, match="no MLflow run"):
        tracking.load_checkpoint("not-a-run-id")
    with tracking.run("e") as run:
        pass
    with pytest.raises(CheckpointError, match="has no checkpoints"):
        tracking.load_checkpoint(run.info.run_id)


def test_corrupt_truncated_and_pickled_checkpoints_raise(workdir):
    tracking.init_store()
    with tracking.run("e") as run:
        tracking.log_checkpoint(run.info.run_id, state_of(tiny_model()), 1)
    path = artifact_dir(run.info.run_id) / "epoch_0001.pt"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        tracking.load_checkpoint(run.info.run_id)
    path.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        tracking.read_checkpoint(path)
    torch.save({"model": Path("/etc/passwd")}, path)  # a pickled object: refused unread
    with pytest.raises(CheckpointError):
        tracking.read_checkpoint(path)
    torch.save([1, 2], path)
    with pytest.raises(CheckpointError, match="not a dict"):
        tracking.read_checkpoint(path)


def test_checkpoint_of_another_architecture_names_the_keys(workdir):
    tracking.init_store()
    small = tiny_model("cct_2_3x2_32")
    deeper = tiny_model("cct_4_3x2_32")
    state = state_of(small)
    state["model"] = deeper.state_dict()
    with tracking.run("e") as run:
        tracking.log_checkpoint(run.info.run_id, state, 1)
    with pytest.raises(CheckpointError, match=r"unexpected keys: classifier\.blocks\.2\."):
        tracking.load_checkpoint(run.info.run_id)
    wider = tiny_model("cct_2_3x2_32", mlp_ratio=2.0)
    state["model"] = wider.state_dict()
    with tracking.run("e") as run2:
        tracking.log_checkpoint(run2.info.run_id, state, 1)
    with pytest.raises(CheckpointError, match="shape mismatches: classifier.blocks.0"):
        tracking.load_checkpoint(run2.info.run_id)


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(workdir, monkeypatch):
    path = workdir / "ck" / "epoch_0001.pt"
    tracking.save_checkpoint({"w": torch.ones(3)}, path)

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        tracking.save_checkpoint({"w": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert torch.equal(tracking.read_checkpoint(path)["w"], torch.ones(3))
    assert [p.name for p in path.parent.iterdir()] == ["epoch_0001.pt"]


def test_listing_ignores_partial_temporary_files(workdir):
    tracking.init_store()
    with tracking.run("e") as run:
        tracking.log_checkpoint(run.info.run_id, state_of(tiny_model()), 1)
    folder = artifact_dir(run.info.run_id)
    (folder / ".epoch_0002.pt.abc123.tmp").write_bytes(b"PK\x03\x04 half a zip")
    (folder / "epoch_2.pt").write_bytes(b"not ours")
    assert tracking.list_checkpoints(run.info.run_id) == [1]
    assert tracking.load_checkpoint(run.info.run_id).epoch == 1


@pytest.mark.timeout(60)
@pytest.mark.slow  # trains or runs a command end to end
def test_unreachable_tracking_server_fails_instead_of_hanging(workdir, monkeypatch, closed_port):
    with pytest.raises(TrackingError, match="cannot reach the MLflow tracking server"):
        tracking.init_store(f"http://127.0.0.1:{closed_port()}")
    # A server that accepts connections but never answers: only a read timeout ends the wait.
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    accepted = []
    stop = threading.Event()

    def accept_and_ignore():
        silent.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(silent.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept_and_ignore, daemon=True)
    thread.start()
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    try:
        with pytest.raises(TrackingError, match="cannot reach"):
            tracking.init_store(f"http://127.0.0.1:{silent.getsockname()[1]}")
    finally:
        stop.set()
        thread.join()
        for conn in accepted:
            conn.close()
        silent.close()
    assert accepted, "the client never connected, so the read timeout was not exercised"
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "2"
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in os.environ


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_four_processes_log_to_one_sqlite_store_without_loss(workdir):
    uri = tracking.init_store()
    steps = 40
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), "log", uri, "crowd", str(i), str(steps)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for i in range(4)
    ]
    outs = [p.communicate(timeout=280) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-2000:]
    run_ids = [out.strip().splitlines()[-1] for out, _ in outs]
    client = mlflow.MlflowClient()
    for i, run_id in enumerate(run_ids):
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED"
        assert run.data.params["index"] == str(i)
        history = client.get_metric_history(run_id, "m")
        assert sorted((m.step, m.value) for m in history) == [
            (s, float(i * 1000 + s)) for s in range(steps)
        ]
        assert tracking.list_checkpoints(run_id) == [1]
        weights = tracking.read_run_checkpoint(run_id)[0]["w"]
        assert torch.equal(weights, torch.full((3,), float(i)))
    experiments = [e.name for e in client.search_experiments()]
    assert sorted(experiments) == ["Default", "crowd"]


def test_sweep_marks_only_runs_of_dead_local_processes_killed(workdir):
    from mlflow.tracking import MlflowClient

    tracking.init_store()
    with tracking.run("e") as mine:
        pass
    client = MlflowClient()
    exp = tracking.experiment_id("e")
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    host = socket.gethostname()

    def running(mark: dict | None) -> str:
        tags = {} if mark is None else {tracking.PROCESS_TAG: json.dumps(mark)}
        return client.create_run(exp, tags=tags).info.run_id

    dead = running({"host": host, "pid": int(gone.stdout), "start": 1})
    reused_pid = running({"host": host, "pid": os.getpid(), "start": -1})
    alive = running({"host": host, "pid": os.getpid(), "start": None})
    elsewhere = running({"host": host + "-other", "pid": int(gone.stdout), "start": 1})
    untagged = running(None)
    tags = tracking.get_run(mine.info.run_id).data.tags
    assert json.loads(tags[tracking.PROCESS_TAG])["pid"] == os.getpid()

    assert sorted(tracking.sweep_dead_runs()) == sorted([dead, reused_pid])
    status = {r: tracking.get_run(r).info.status for r in (dead, reused_pid, alive)}
    status |= {r: tracking.get_run(r).info.status for r in (elsewhere, untagged)}
    assert status == {
        dead: "KILLED",
        reused_pid: "KILLED",
        alive: "RUNNING",
        elsewhere: "RUNNING",
        untagged: "RUNNING",
    }
    assert tracking.get_run(mine.info.run_id).info.status == "FINISHED"
    assert tracking.sweep_dead_runs() == []
