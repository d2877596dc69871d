"""Training and inference throughput: our CCT against ``vit_pytorch.cct`` at the same configuration.

Both models get the same weights, batch, dtype and thread count; their repetitions are
interleaved (ABBA order per round) in one process so that load on a shared machine hits both
alike. A training step is forward + cross-entropy + backward + AdamW step in train mode; a
forward pass is eval mode under ``torch.inference_mode``. Reports images/s (median over rounds)
and the ratio ours / theirs, and writes everything as JSON.

    python benchmarks/train_throughput.py --batch 32 --threads 2 --attention-dropout 0.1

Attention dropout is 0 by default so that our SDPA attention can take its fused fast path in
training; the reference trains with 0.1 (pass ``--attention-dropout 0.1`` to measure that).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from statmech_nn import models

MODES = ("train", "forward")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="cct_7_3x1_32", help="registered CCT name")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--batch", type=int, default=128, help="images per step (default: 128)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument(
        "--dtype",
        choices=("fp32", "bf16"),
        default="fp32",
        help="fp32, or bf16 autocast with fp32 weights (default: fp32)",
    )
    parser.add_argument(
        "--attention-dropout",
        type=float,
        default=0.0,
        help="attention dropout of both models in training (reference: 0.1; default: 0)",
    )
    parser.add_argument("--num-classes", type=int, default=100, help="head size (default: 100)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default: 5)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per round (default: 3)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (default: 2)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("benchmarks/train_throughput.json"),
        help="JSON output path (default: benchmarks/train_throughput.json)",
    )
    return parser.parse_args(argv)


def build_pair(args: argparse.Namespace) -> tuple[nn.Module, nn.Module]:
    """Ours and vit_pytorch's CCT with identical weights."""
    from vit_pytorch.cct import CCT

    torch.manual_seed(args.seed)
    ours = models.create(
        args.model, num_classes=args.num_classes, attention_dropout=args.attention_dropout
    )
    c = ours.config
    theirs = CCT(
        img_size=c["img_size"],
        embedding_dim=c["embedding_dim"],
        n_conv_layers=c["n_conv_layers"],
        kernel_size=c["kernel_size"],
        stride=c["stride"],
        padding=c["padding"],
        num_layers=c["num_layers"],
        num_heads=c["num_heads"],
        mlp_ratio=c["mlp_ratio"],
        num_classes=c["num_classes"],
        dropout_rate=c["dropout"],
        attention_dropout=c["attention_dropout"],
        stochastic_depth_rate=c["stochastic_depth"],
        positional_embedding=c["positional_embedding"],
    )
    theirs.load_state_dict(ours.state_dict())
    return ours.to(args.device), theirs.to(args.device)


def autocast(args: argparse.Namespace) -> contextlib.AbstractContextManager:
    if args.dtype == "bf16":
        return torch.autocast(torch.device(args.device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def synchronize(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


class Runner:
    """One model with its optimiser and fixed batch; ``train``/``forward`` time ``n`` steps."""

    def __init__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, args: argparse.Namespace
    ) -> None:
        self.model, self.x, self.y, self.args = model, x, y, args
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=0.05)

    def _timed(self, n: int, step) -> tuple[float, float]:
        synchronize(self.args.device)
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(n):
            step()
        synchronize(self.args.device)
        images = n * self.args.batch
        return images / (time.perf_counter() - wall), images / (time.process_time() - cpu)

    def _train_step(self) -> None:
        with autocast(self.args):
            loss = F.cross_entropy(self.model(self.x), self.y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    def _forward_step(self) -> None:
        with torch.inference_mode(), autocast(self.args):
            self.model(self.x)

    def train(self, n: int) -> tuple[float, float]:
        """(images per wall second, images per process-CPU second) over ``n`` training steps."""
        self.model.train()
        return self._timed(n, self._train_step)

    def forward(self, n: int) -> tuple[float, float]:
        """The same for ``n`` eval-mode forward passes."""
        self.model.eval()
        return self._timed(n, self._forward_step)


def machine(args: argparse.Namespace) -> dict:
    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "ld_preload": os.environ.get("LD_PRELOAD", ""),
    }
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    if torch.device(args.device).type == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    return info


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    ours, theirs = build_pair(args)
    c = ours.config
    g = torch.Generator().manual_seed(args.seed)
    x = torch.randn(args.batch, c["in_channels"], c["img_size"], c["img_size"], generator=g)
    y = torch.randint(0, args.num_classes, (args.batch,), generator=g)
    x, y = x.to(args.device), y.to(args.device)
    runners = {"ours": Runner(ours, x, y, args), "theirs": Runner(theirs, x, y, args)}
    for runner in runners.values():
        runner.train(args.warmup)
        runner.forward(args.warmup)
    wall = {mode: {k: [] for k in runners} for mode in MODES}
    cpu = {mode: {k: [] for k in runners} for mode in MODES}
    for r in range(args.rounds):
        order = ["ours", "theirs"] if r % 2 == 0 else ["theirs", "ours"]
        for mode in MODES:
            for key in order:
                w, c = getattr(runners[key], mode)(args.steps)
                wall[mode][key].append(w)
                cpu[mode][key].append(c)
    result = {
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "model_config": ours.config,
        "machine": machine(args),
        "images_per_s": wall,
        "images_per_cpu_s": cpu,
    }
    for mode in MODES:
        med = {k: statistics.median(v) for k, v in wall[mode].items()}
        med_cpu = {k: statistics.median(v) for k, v in cpu[mode].items()}
        result[f"{mode}_median"] = med
        result[f"{mode}_ratio"] = med["ours"] / med["theirs"]
        result[f"{mode}_cpu_median"] = med_cpu
        result[f"{mode}_cpu_ratio"] = med_cpu["ours"] / med_cpu["theirs"]
        print(
            f"{mode:8s} ours {med['ours']:8.1f} img/s   vit_pytorch {med['theirs']:8.1f} img/s   "
            f"ratio {result[f'{mode}_ratio']:.2f}x   "
            f"(per CPU second: {med_cpu['ours']:.1f} vs {med_cpu['theirs']:.1f}, "
            f"ratio {result[f'{mode}_cpu_ratio']:.2f}x)"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
