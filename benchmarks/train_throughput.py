"""Training and inference throughput: our CCT against ``vit_pytorch.cct`` at the same configuration.

Both models get the same weights, batch, dtype and thread count; their repetitions are
interleaved (ABBA order per round) in one process so that load on a shared machine hits both
alike. A training step is forward + cross-entropy + backward + AdamW step in train mode; a
forward pass is eval mode under ``torch.inference_mode``. Reports images/s (median over rounds)
and the ratio ours / theirs, and writes everything as JSON.

    python benchmarks/train_throughput.py --batch 32 --threads 2 --attention-dropout 0.1

Attention dropout is 0 by default so that our SDPA attention can take its fused fast path in
training; the reference trains with 0.1 (pass ``--attention-dropout 0.1`` to measure that).

CPU bf16 (issue 11): ``--dtype bf16 --fp32-baseline --compare-paths`` adds vit_pytorch in fp32
and ours with the other attention kernel (SDPA vs explicit matmuls, ``models.cct``) to the
interleaved rounds, and ``--kernels`` times one block's attention (SDPA / matmuls) and its
linear layers in fp32 and bf16, forward + backward, to show where the bound lies:

    python benchmarks/train_throughput.py --dtype bf16 --threads 2 --batch 16 --modes train \
        --fp32-baseline --compare-paths --kernels --rounds 2 --steps 1 --warmup 1
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
from statmech_nn.models.cct import (
    matmul_attention,
    native_bf16_cpu,
    set_attention_path,
    uses_matmul_attention,
)

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
        "--modes",
        nargs="+",
        choices=MODES,
        default=list(MODES),
        help="what to time (default: both)",
    )
    parser.add_argument(
        "--attention-path",
        choices=("auto", "sdpa", "matmul"),
        default="auto",
        help="our attention kernel (default: auto, by device and dtype)",
    )
    parser.add_argument(
        "--compare-paths",
        action="store_true",
        help="also time ours with the other attention kernel ('ours_other')",
    )
    parser.add_argument(
        "--fp32-baseline",
        action="store_true",
        help="with --dtype bf16: also time vit_pytorch in fp32 ('theirs_fp32')",
    )
    parser.add_argument(
        "--kernels",
        action="store_true",
        help="also time one block's attention and linear layers, fp32 vs bf16, fwd + bwd",
    )
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


def autocast(device: str, dtype: str) -> contextlib.AbstractContextManager:
    if dtype == "bf16":
        return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def synchronize(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


class Runner:
    """One model with its optimiser and fixed batch; ``train``/``forward`` time ``n`` steps."""

    def __init__(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        args: argparse.Namespace,
        dtype: str | None = None,
    ) -> None:
        self.model, self.x, self.y, self.args = model, x, y, args
        self.dtype = dtype or args.dtype
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
        with autocast(self.args.device, self.dtype):
            loss = F.cross_entropy(self.model(self.x), self.y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    def _forward_step(self) -> None:
        with torch.inference_mode(), autocast(self.args.device, self.dtype):
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


def _fwd_bwd_ms(fn, inputs: list[torch.Tensor], repeats: int = 3) -> float:
    """Process-CPU milliseconds of ``fn(*inputs)`` forward + backward (best of ``repeats``)."""
    inputs = [t.detach().requires_grad_() for t in inputs]
    fn(*inputs).float().sum().backward()
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        fn(*inputs).float().sum().backward()
        best = min(best, time.process_time() - start)
    return 1000 * best


def kernel_times(ours: nn.Module, args: argparse.Namespace) -> dict[str, float]:
    """ms of one block's attention (SDPA, matmuls) and its 4 linear layers, fp32 and bf16."""
    c = ours.config
    heads, dim, tokens = c["num_heads"], c["embedding_dim"], ours.num_tokens
    hidden = int(dim * c["mlp_ratio"])
    g = torch.Generator().manual_seed(args.seed)
    qkv = [torch.randn(args.batch, heads, tokens, dim // heads, generator=g) for _ in range(3)]
    x = torch.randn(args.batch, tokens, dim, generator=g)
    block = ours.classifier.blocks[0]
    linears = [block.self_attn.qkv, block.self_attn.proj, block.linear1, block.linear2]
    inputs = [x, x, x, torch.randn(args.batch, tokens, hidden, generator=g)]

    def linear_layers(*xs: torch.Tensor) -> torch.Tensor:
        return sum(layer(t).float().sum() for layer, t in zip(linears, xs, strict=True))

    out = {}
    for dtype in ("fp32", "bf16"):
        cast = torch.bfloat16 if dtype == "bf16" else torch.float32
        with autocast("cpu", dtype):
            out[f"attention_sdpa_{dtype}"] = _fwd_bwd_ms(
                F.scaled_dot_product_attention, [t.to(cast) for t in qkv]
            )
            out[f"attention_matmul_{dtype}"] = _fwd_bwd_ms(
                matmul_attention, [t.to(cast) for t in qkv]
            )
            out[f"linear_layers_{dtype}"] = _fwd_bwd_ms(linear_layers, inputs)
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    ours, theirs = build_pair(args)
    set_attention_path(ours, args.attention_path)
    c = ours.config
    g = torch.Generator().manual_seed(args.seed)
    x = torch.randn(args.batch, c["in_channels"], c["img_size"], c["img_size"], generator=g)
    y = torch.randint(0, args.num_classes, (args.batch,), generator=g)
    x, y = x.to(args.device), y.to(args.device)
    runners = {"ours": Runner(ours, x, y, args), "theirs": Runner(theirs, x, y, args)}
    probe = torch.zeros(
        1, device=args.device, dtype=torch.bfloat16 if args.dtype == "bf16" else None
    )
    chosen = "matmul" if uses_matmul_attention(probe, args.attention_path) else "sdpa"
    if args.compare_paths:
        other, _ = build_pair(args)
        set_attention_path(other, "sdpa" if chosen == "matmul" else "matmul")
        runners["ours_other"] = Runner(other, x, y, args)
    if args.fp32_baseline and args.dtype == "bf16":
        _, theirs_fp32 = build_pair(args)
        runners["theirs_fp32"] = Runner(theirs_fp32, x, y, args, dtype="fp32")
    for runner in runners.values():
        for mode in args.modes:
            getattr(runner, mode)(args.warmup)
    wall = {mode: {k: [] for k in runners} for mode in args.modes}
    cpu = {mode: {k: [] for k in runners} for mode in args.modes}
    for r in range(args.rounds):
        order = list(runners) if r % 2 == 0 else list(runners)[::-1]
        for mode in args.modes:
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
        "attention_path": chosen,
        "native_bf16_cpu": native_bf16_cpu(),
    }
    for mode in args.modes:
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
        for key in runners:
            if key in ("ours", "theirs"):
                continue
            result[f"{mode}_cpu_ratio_vs_{key}"] = med_cpu["ours"] / med_cpu[key]
            print(
                f"{'':8s} {key}: {med_cpu[key]:.2f} img per CPU s; ours / {key} "
                f"{result[f'{mode}_cpu_ratio_vs_{key}']:.2f}x (wall {med['ours'] / med[key]:.2f}x)"
            )
    if args.kernels:
        result["kernel_ms"] = kernel_times(ours, args)
        for name, ms in result["kernel_ms"].items():
            print(f"kernel {name:24s} {ms:8.1f} ms (process CPU, fwd + bwd, batch {args.batch})")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
