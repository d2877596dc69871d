"""Subprocess entry points for the reliability tests (not a test module).

python tests/_train_worker.py log URI EXPERIMENT INDEX STEPS
    one MLflow run logging STEPS values of metric ``m`` (value = INDEX * 1000 + step) and a
    checkpoint; used to hammer one SQLite store from several processes at once.
python tests/_train_worker.py kill-at-step STEP -- CLI ARGS...
    ``statmech-nn train`` that SIGKILLs itself after its STEP-th optimiser step (mid-epoch).
python tests/_train_worker.py kill-in-write EPOCH -- CLI ARGS...
    ``statmech-nn train`` that SIGKILLs itself halfway through writing the bytes of the
    checkpoint of epoch EPOCH, leaving a partial temporary file behind.
"""

from __future__ import annotations

import io
import os
import signal
import sys

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


def main(argv: list[str]) -> int:
    mode = argv[0]
    if mode == "log":
        return log(argv[1], argv[2], int(argv[3]), int(argv[4]))
    rest = argv[argv.index("--") + 1 :]
    if mode == "kill-at-step":
        return kill_at_step(int(argv[1]), rest)
    if mode == "kill-in-write":
        return kill_in_write(int(argv[1]), rest)
    raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
