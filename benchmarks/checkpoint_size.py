"""Checkpoint bytes of a long training run: every epoch a full resume state (before) vs the
newest ``keep_resume`` full states and weights-only safetensors for the rest (now).

One real training state of the model (AdamW moments after one step, the schedule, RNGs) is
written both ways through ``tracking.log_checkpoint`` into a throwaway MLflow store; the run's
total is computed from these per-epoch sizes (every epoch's files are the same size), and the
retention is checked on the folder it leaves. Usage (repository root):

    PYTHONPATH=$PWD python benchmarks/checkpoint_size.py            # CCT-7/3x1, 100 labels
    PYTHONPATH=$PWD python benchmarks/checkpoint_size.py --quick    # a tiny CCT, seconds
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import torch


def training_state(model_name: str, num_classes: int, epoch: int, keep: int) -> dict:
    """A resumable state of ``model_name`` after one AdamW step, as the training loop writes."""
    from statmech_nn import models
    from statmech_nn.train import TrainConfig
    from statmech_nn.train.steps import make_optimizer
    from statmech_nn.train.steps import training_state as full_state

    torch.manual_seed(epoch)
    model = models.create(model_name, num_classes=num_classes, img_size=32)
    config = TrainConfig(model=model_name, epochs=300, keep_resume=keep, device="cpu")
    optimizer = make_optimizer(model, config.lr, config.weight_decay)
    x = torch.randn(2, 3, 32, 32)
    model(x).logsumexp(1).mean().backward()
    optimizer.step()

    class _Schedule:
        def state_dict(self) -> dict:
            return {"steps": epoch}

    full = {**config.to_dict(), "model_config": model.config}
    gen = torch.Generator().manual_seed(epoch)
    return full_state(epoch, model, model.config, full, optimizer, _Schedule(), None, gen)


def measure(model_name: str, num_classes: int, epochs: int, keep: int, logged: int) -> dict:
    """Per-epoch sizes of both forms and the totals of an ``epochs``-epoch run."""
    from statmech_nn import tracking

    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        tracking.init_store()
        with tracking.run("checkpoint-size") as run:
            for epoch in range(logged):  # the retention on a real folder, `logged` epochs
                tracking.log_checkpoint(run.info.run_id, training_state(
                    model_name, num_classes, epoch, keep), epoch)  # fmt: skip
        folder = tracking.local_artifact_dir(run.info.run_id) / tracking.CHECKPOINT_DIR
        sizes = {p.name: p.stat().st_size for p in folder.iterdir() if p.name.startswith("epoch")}
        fulls = sorted(n for n in sizes if n.endswith(".pt"))
        weights = sorted(n for n in sizes if n.endswith(".safetensors"))
        assert len(fulls) == min(keep, logged) and len(weights) == logged - len(fulls), sizes
        full_bytes = sizes[fulls[-1]]  # a trained epoch's full state (epoch 0 has no moments)
        weight_bytes = sizes[weights[-1]]
        state0 = training_state(model_name, num_classes, 0, keep)
        state0["optimizer"] = {"state": {}, "param_groups": state0["optimizer"]["param_groups"]}
        tracking.save_checkpoint(state0, Path(tmp) / "e0.pt")
        e0 = (Path(tmp) / "e0.pt").stat().st_size
        os.chdir("/")
    today = e0 + epochs * full_bytes  # epochs 0..E, every one a full state
    kept = min(keep, epochs + 1)
    new = (epochs + 1 - kept) * weight_bytes + kept * full_bytes
    return {
        "model": model_name,
        "num_classes": num_classes,
        "epochs": epochs,
        "keep_resume": keep,
        "full_state_bytes": full_bytes,
        "epoch0_full_state_bytes": e0,
        "weights_only_bytes": weight_bytes,
        "today_total_bytes": today,
        "new_total_bytes": new,
        "ratio": new / today,
        "files_checked": sorted(sizes),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="cct_7_3x1_32")
    parser.add_argument("--num-classes", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--keep-resume", type=int, default=2)
    parser.add_argument("--logged", type=int, default=4, help="epochs really logged (default 4)")
    parser.add_argument("--device", default="cpu", help="accepted for gpu_check.sh; sizes only")
    parser.add_argument("--quick", action="store_true", help="a tiny CCT (cct_2_3x2_32, 10)")
    parser.add_argument("--out", type=Path, default=None, help="write the numbers as JSON")
    args = parser.parse_args()
    if args.quick:
        args.model, args.num_classes = "cct_2_3x2_32", 10
    got = measure(args.model, args.num_classes, args.epochs, args.keep_resume, args.logged)
    mb = 1e6
    print(f"{got['model']} ({got['num_classes']} labels), {got['epochs']} epochs, keep "
          f"{got['keep_resume']} full states")  # fmt: skip
    print(f"  full resume state {got['full_state_bytes'] / mb:.2f} MB (epoch 0 "
          f"{got['epoch0_full_state_bytes'] / mb:.2f} MB), weights-only "
          f"{got['weights_only_bytes'] / mb:.2f} MB")  # fmt: skip
    print(
        f"  run total: today {got['today_total_bytes'] / 1e9:.3f} GB, now "
        f"{got['new_total_bytes'] / 1e9:.3f} GB, ratio {got['ratio']:.4f} (target <= 1/3)"
    )
    if args.out is not None:
        args.out.write_text(json.dumps(got, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
