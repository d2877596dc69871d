"""Subprocess entry points for the reliability tests (not a test module).

python tests/_train_worker.py log URI EXPERIMENT INDEX STEPS
    one MLflow run logging STEPS values of metric ``m`` (value = INDEX * 1000 + step) and a
    checkpoint; used to hammer one SQLite store from several processes at once.
python tests/_train_worker.py kill-at-step STEP -- CLI ARGS...
    ``statmech-nn train`` that SIGKILLs itself after its STEP-th optimiser step (mid-epoch).
python tests/_train_worker.py kill-in-write EPOCH -- CLI ARGS...
    ``statmech-nn train`` that SIGKILLs itself halfway through writing the bytes of the
    checkpoint of epoch EPOCH, leaving a partial temporary file behind.
python tests/_train_worker.py kill-after-metrics EPOCH -- CLI ARGS...
    ``statmech-nn train`` that SIGKILLs itself right after logging the metrics of epoch EPOCH.
python tests/_train_worker.py kill-after-checkpoint EPOCH -- CLI ARGS...
    ``statmech-nn train`` that SIGKILLs itself right after writing the checkpoint of epoch EPOCH.
python tests/_train_worker.py pause-after-checkpoint EPOCH DIR -- CLI ARGS...
    ``statmech-nn train`` that, after writing the checkpoint of epoch EPOCH, creates DIR/reached
    and waits until DIR/go exists (the test meanwhile kills a server or tries a second resume).
"""

from __future__ import annotations

import io
import os
import signal
import sys
import time
from pathlib import Path

import torch

torch.set_num_threads(1)


def _die() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def log(uri: str, experiment: str, index: int, steps: int) -> int:
    import mlflow

    from statmech_nn import tracking

    tracking.use_store(uri)
    with tracking.run(experiment, run_name=f"worker{index}", tags={"worker": index}) as run:
        mlflow.log_param("index", index)
        for step in range(steps):
            mlflow.log_metric("m", index * 1000 + step, step=step)
        tracking.log_checkpoint(run.info.run_id, {"w": torch.full((3,), float(index))}, 1)
    print(run.info.run_id)
    return 0


def kill_at_step(step: int, argv: list[str]) -> int:
    from statmech_nn import cli, train

    original = train.Schedule.step

    def counting_step(self: train.Schedule) -> None:
        original(self)
        if self.step_count == step:
            _die()

    train.Schedule.step = counting_step
    return cli.main(argv)


def kill_in_write(epoch: int, argv: list[str]) -> int:
    from statmech_nn import cli

    original = torch.save

    def partial_save(obj, f, *args, **kwargs):
        if isinstance(obj, dict) and obj.get("epoch") == epoch and "model" in obj:
            buffer = io.BytesIO()
            original(obj, buffer, *args, **kwargs)
            data = buffer.getvalue()
            f.write(data[: len(data) // 2])
            f.flush()
            os.fsync(f.fileno())
            _die()
        return original(obj, f, *args, **kwargs)

    torch.save = partial_save
    return cli.main(argv)


def kill_after_metrics(epoch: int, argv: list[str]) -> int:
    from statmech_nn import cli
    from statmech_nn.train import records

    original = records.log_metrics

    def log_then_die(metrics, step):
        original(metrics, step)
        if step == epoch:
            _die()

    records.log_metrics = log_then_die
    return cli.main(argv)


def _after_checkpoint(epoch: int, then) -> None:
    from statmech_nn import tracking

    original = tracking.log_checkpoint

    def write_then(run_id, state, done):
        written = original(run_id, state, done)
        if done == epoch:
            then()
        return written

    tracking.log_checkpoint = write_then


def kill_after_checkpoint(epoch: int, argv: list[str]) -> int:
    from statmech_nn import cli

    _after_checkpoint(epoch, _die)
    return cli.main(argv)


def pause_after_checkpoint(epoch: int, folder: str, argv: list[str]) -> int:
    from statmech_nn import cli

    def pause() -> None:
        (Path(folder) / "reached").touch()
        while not (Path(folder) / "go").exists():
            time.sleep(0.1)

    _after_checkpoint(epoch, pause)
    return cli.main(argv)


def main(argv: list[str]) -> int:
    mode = argv[0]
    if mode == "log":
        return log(argv[1], argv[2], int(argv[3]), int(argv[4]))
    rest = argv[argv.index("--") + 1 :]
    if mode == "kill-at-step":
        return kill_at_step(int(argv[1]), rest)
    if mode == "kill-in-write":
        return kill_in_write(int(argv[1]), rest)
    if mode == "kill-after-metrics":
        return kill_after_metrics(int(argv[1]), rest)
    if mode == "kill-after-checkpoint":
        return kill_after_checkpoint(int(argv[1]), rest)
    if mode == "pause-after-checkpoint":
        return pause_after_checkpoint(int(argv[1]), argv[2], rest)
    raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
