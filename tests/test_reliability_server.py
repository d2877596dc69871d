"""A tracking server that dies mid-training: a bounded one-line error, nothing lost.

A real ``mlflow server`` on 127.0.0.1 (a free port; loopback only) is started, killed while the
trainer waits between two epochs, and restarted on the same database.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch
from _tiny import subprocess_env

from statmech_nn import cli, tracking

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("_train_worker.py")
ARGS = ["train", "--model", "cct_2_3x2_32", "--dataset", "digits", "--img-size", "16",
        "--epochs", "3", "--batch-size", "32", "--limit-train", "64", "--limit-eval", "32",
        "--seed", "3", "--device", "cpu"]  # fmt: skip
HTTP_ENV = ("MLFLOW_HTTP_REQUEST_TIMEOUT", "MLFLOW_HTTP_REQUEST_MAX_RETRIES",
            "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR")  # fmt: skip


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _env() -> dict[str, str]:
    return subprocess_env(drop=lambda name: name in HTTP_ENV or name == "MLFLOW_TRACKING_URI")


class Server:
    """``mlflow server`` on 127.0.0.1:port over one SQLite database and artifact folder."""

    def __init__(self, folder: Path, port: int) -> None:
        self.folder, self.port = folder, port
        self.uri = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1",
               "--port", str(self.port), "--workers", "1",
               "--backend-store-uri", f"sqlite:///{self.folder / 'server.db'}",
               "--artifacts-destination", str(self.folder / "artifacts")]  # fmt: skip
        log = open(self.folder / "server.log", "ab")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen(
            cmd, stdout=log, stderr=log, env=_env(), start_new_session=True
        )
        log.close()
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, (self.folder / "server.log").read_text()[-2000:]
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        else:
            raise AssertionError("mlflow server did not start")
        # The first store request opens the database: wait for it outside the trainer's probe.
        search = f"{self.uri}/api/2.0/mlflow/experiments/search?max_results=1"
        with urllib.request.urlopen(search, timeout=120) as answer:
            assert answer.status == 200

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the server and its gunicorn worker
            self.proc.wait()
        self.proc = None


@pytest.fixture
def server(workdir):
    folder = workdir / "server"
    folder.mkdir()
    started = Server(folder, _free_port())
    started.start()
    yield started
    started.kill()
    tracking.use_store()


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_server_killed_mid_training_is_a_bounded_one_line_error_and_nothing_is_lost(
    workdir, server, capsys, monkeypatch
):
    signals = workdir / "signals"
    signals.mkdir()
    argv = [*ARGS, "--tracking-uri", server.uri]
    trainer = subprocess.Popen(
        [sys.executable, str(WORKER), "pause-after-checkpoint", "1", str(signals), "--", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
        cwd=workdir,
    )
    try:
        while not (signals / "reached").exists():
            assert trainer.poll() is None, trainer.communicate()[1][-3000:]
            time.sleep(0.2)
        server.kill()
        (signals / "go").touch()
        # MLflow's defaults retried for minutes; the trainer's limits end it far sooner.
        _, err = trainer.communicate(timeout=150)
    finally:
        if trainer.poll() is None:
            trainer.kill()
            trainer.wait()
    lines = err.strip().splitlines()
    assert trainer.returncode == 2, err[-3000:]
    assert len(lines) == 1, err[-3000:]
    line = lines[0]
    assert line.startswith("statmech-nn train: error: lost the MLflow tracking server"), line
    kept = workdir / "mlruns" / "unsent"
    (run_id,) = [p.name for p in kept.iterdir()]
    # Epoch 1 was checkpointed on the server, then its metrics could not be logged.
    local = kept / run_id / "epoch_0001.pt"
    assert "while recording epoch 1" in line and str(local) in line and run_id in line
    state = tracking.read_checkpoint(local)
    assert state["epoch"] == 1 and all(torch.isfinite(v).all() for v in state["model"].values())

    server.start()  # back, on the same database
    tracking.init_store(server.uri)  # what the next command does first
    run = tracking.get_run(run_id)
    assert run.info.status == "FAILED"
    assert tracking.list_checkpoints(run_id) == [0, 1]  # what reached the server stays usable
    assert not (kept / run_id / "end.json").exists()

    assert cli.main(["train", "--resume", run_id, "--tracking-uri", server.uri]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == run_id
    assert tracking.get_run(run_id).info.status == "FINISHED"
    assert tracking.list_checkpoints(run_id) == [0, 1, 2, 3]
    on_server = tracking.read_run_checkpoint(run_id, 1)[0]["model"]
    for key, value in state["model"].items():  # the local copy is the epoch's state
        assert torch.equal(on_server[key], value), key
    client = tracking.uris.client()
    for key in client.get_run(run_id).data.metrics:
        steps = sorted(m.step for m in client.get_metric_history(run_id, key))
        assert steps == [1, 2, 3], (key, steps)
