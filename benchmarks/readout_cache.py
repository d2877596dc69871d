"""Benchmark the readout activation cache (issue 11, item 1); one run, prints ratios, writes JSON.

Readouts of all 14 ``mha`` + ``ff`` sites of a random CCT-7/3x1 (eval mode) are trained for
``--epochs`` epochs on synthetic CIFAR-shaped data, for each readout kind, two ways in one
process: today's loop (``cache="none"``: one backbone pass per batch of every epoch) and the
cached loop (one backbone pass fills the cache, every epoch trains on it). The cached run's log
lines split its time into the caching pass and the epochs on the cache, so the note can give
the steady-state ratio per epoch and the bound ``E u / (u + E c)`` that one backbone pass
allows (``u``: today's epoch, ``c``: a cached epoch; the pass costs about one of today's
epochs). The weights of the two ways are compared too (max abs difference;
with ``--cache-dtype fp32`` they agree to float tolerance).

Targets on CPU (E = 20): >= 8x seqpool, >= 50x mean, >= 3x flatten.

Usage: ``python benchmarks/readout_cache.py [--samples 32] [--epochs 20] [--device cuda]
[--batched on] [--out FILE]``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import time
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

from statmech_nn import models
from statmech_nn.readout import ReadoutConfig, train_readouts
from statmech_nn.sites import resolve

TARGETS = {"seqpool": 8.0, "mean": 50.0, "flatten": 3.0}


class Phases(logging.Handler):
    """Collects the cache-fill and cached-training seconds that the readout cache logs."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.fill = self.train = 0.0

    def emit(self, record: logging.LogRecord) -> None:
        if "filled in" in str(record.msg):
            self.fill += float(record.args[-1])  # type: ignore[index]
        elif "trained on it in" in str(record.msg):
            self.train += float(record.args[2])  # type: ignore[index]


PHASES = Phases()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed_train(model, sites, data, labels, config, device) -> tuple[float, dict]:
    sync(device)
    start = time.perf_counter()
    readouts = train_readouts(model, sites, data, labels, config, device, progress=False)
    sync(device)
    return time.perf_counter() - start, readouts


def max_weight_diff(a: dict, b: dict) -> float:
    return max(float((a[n].fc.weight - b[n].fc.weight).abs().max()) for n in a)


def bench_kind(kind: str, model, sites, data, args, device) -> dict:
    base = dict(readout=kind, batch_size=args.batch_size, seed=0)
    batched = {"auto": None, "on": True, "off": False}[args.batched]
    cached_options = dict(cache_dtype=args.cache_dtype, batched=batched)
    uncached_epochs = args.uncached_epochs or args.epochs
    t_none, ref = timed_train(
        model, sites, data, args.labels,
        ReadoutConfig(epochs=uncached_epochs, cache="none", **base), device,
    )  # fmt: skip
    t_none *= args.epochs / uncached_epochs
    PHASES.fill = PHASES.train = 0.0
    t_cached, got = timed_train(
        model, sites, data, args.labels,
        ReadoutConfig(epochs=args.epochs, **cached_options, **base), device,
    )  # fmt: skip
    epoch_cached = PHASES.train / args.epochs
    epoch_none = t_none / args.epochs
    row = {
        "kind": kind,
        "uncached_s": t_none,
        "uncached_epochs_measured": uncached_epochs,
        "cached_s": t_cached,
        "cache_pass_s": PHASES.fill,
        "cached_training_s": PHASES.train,
        "cached_other_s": t_cached - PHASES.fill - PHASES.train,
        "epoch_uncached_s": epoch_none,
        "epoch_cached_s": epoch_cached,
        "ratio": t_none / t_cached,
        "ratio_per_epoch": epoch_none / epoch_cached if epoch_cached > 0 else float("inf"),
        "bound_one_pass": args.epochs * epoch_none / (epoch_none + PHASES.train),
        "target": TARGETS[kind],
        "max_abs_weight_diff": max_weight_diff(ref, got)
        if uncached_epochs == args.epochs
        else None,
    }
    print(
        f"{kind:8s} E={args.epochs}: today {t_none:7.1f} s, cached {t_cached:7.1f} s "
        f"(pass {row['cache_pass_s']:.1f} s + {epoch_cached:.2f} s/epoch) -> {row['ratio']:.1f}x "
        f"(target >= {TARGETS[kind]:g}x); per epoch {epoch_none:.2f} s vs {epoch_cached:.3f} s "
        f"= {row['ratio_per_epoch']:.1f}x; bound with one pass {row['bound_one_pass']:.1f}x; "
        f"max |dW| {row['max_abs_weight_diff']}",
        flush=True,
    )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument(
        "--uncached-epochs",
        type=int,
        default=0,
        help="epochs of today's loop actually run, scaled to --epochs (0: all)",
    )
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--labels", type=int, default=100)
    parser.add_argument("--kinds", default="seqpool,mean,flatten")
    parser.add_argument("--cache-dtype", default="bf16", choices=("bf16", "fp32"))
    parser.add_argument(
        "--batched",
        default="auto",
        choices=("auto", "on", "off"),
        help="batched readouts (auto: on CUDA)",
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--out", default="benchmarks/results_readout_cache.json")
    args = parser.parse_args()  # fmt: skip
    logging.basicConfig(level=logging.INFO, format="  [%(name)s] %(message)s")
    logging.getLogger("statmech_nn.readout").addHandler(PHASES)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = models.create("cct_7_3x1_32", num_classes=args.labels).eval()
    sites = resolve(model, "mha,ff")
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(args.samples, 3, 32, 32, generator=gen)
    data = TensorDataset(x, torch.arange(args.samples) % args.labels)
    result = {
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpus": os.cpu_count(),
            "loadavg_start": os.getloadavg(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "device": str(device),
            "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        },
        "args": vars(args),
        "sites": len(sites),
        "rows": [],
    }
    print(f"{len(sites)} sites, {args.samples} samples, batch {args.batch_size}, "
          f"{args.labels} labels, device {device}, load {os.getloadavg()}", flush=True)  # fmt: skip
    warm = ReadoutConfig(epochs=1, batch_size=args.batch_size, cache="none")
    timed_train(model, sites, TensorDataset(x[:2], data.tensors[1][:2]), args.labels, warm, device)
    for kind in args.kinds.split(","):
        result["rows"].append(bench_kind(kind, model, sites, data, args, device))
    result["machine"]["loadavg_end"] = os.getloadavg()
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
