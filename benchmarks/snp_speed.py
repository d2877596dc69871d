"""Benchmark the SNP engine (issue 3); one run, prints ratios, writes JSON.

1. Single-node matrices of one CCT-7/3x1-sized site (default 256 nodes x 256 tokens, 100 labels):
   the vectorised engine (``statmech_nn.snp.matrices``, one streaming pass) against the literal
   reference (``statmech_nn.snp.reference``: one float64 readout rerun per node). The reference
   runs on ``--ref-nodes`` nodes and is extrapolated linearly to all nodes (its cost is the same
   for every node). Activations are synthetic (class-dependent means plus noise) and fed through
   an identity backbone (on ``--device`` for the vectorised side), so both sides time only the
   matrix computation; the vectorised side reads batches as views of the stored activations
   and keeps the fastest of ``--repeats`` runs. Readout accuracy (a separate product of
   ``matrices``) is switched off for this timing.
   Targets: >= 100x for seqpool/pre_pool, >= 1000x for seqpool/post_pool, mean and flatten.
2. Readout training of all 14 ``mha`` + ``ff`` sites of a random CCT-7/3x1 in one pass against
   one site alone (the deepest, ``block6.ff``, which needs the same backbone forward; and the
   shallowest, ``block0.mha``, whose forward is cut after block 0). Target: <= 1.5x.

Usage: ``python benchmarks/snp_speed.py [--samples 2000] [--device cuda] [--out FILE]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from statmech_nn import models, snp
from statmech_nn.readout import ReadoutConfig, make_readout, train_readouts
from statmech_nn.sites import Site, resolve
from statmech_nn.snp.reference import reference_node_matrices

VARIANTS = [
    ("seqpool", "pre_pool", 100),
    ("seqpool", "post_pool", 1000),
    ("mean", "-", 1000),
    ("flatten", "-", 1000),
]


class Identity(nn.Module):
    """A backbone whose only site is its input."""

    def __init__(self) -> None:
        super().__init__()
        self.site = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.site(x)


def synthetic_activations(samples: int, tokens: int, nodes: int, labels: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(samples) % labels
    centres = torch.randn(labels, 1, nodes, generator=gen)
    a = torch.randn(samples, tokens, nodes, generator=gen)
    a += centres[y]
    return a, y


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench_matrices(args: argparse.Namespace, device: torch.device) -> list[dict]:
    a, y = synthetic_activations(args.samples, args.tokens, args.nodes, args.labels)
    a64 = a.double()
    # Batches are contiguous slices of the stored activations (no copy): per-sample indexing
    # and stacking would dominate the vectorised time and measure the loader, not the SNP maths.
    slices = [slice(s, s + args.batch_size) for s in range(0, args.samples, args.batch_size)]
    # On a GPU the activations live there, as they would coming out of a model on that GPU.
    stored = TensorDataset(a.to(device), y.to(device))
    data = DataLoader(stored, batch_size=None, sampler=slices)
    backbone = Identity().eval()
    site = Site("site", "mha", 0, "site", heads=None)
    nodes = list(range(args.ref_nodes))
    rows = []
    for kind, silencing, target in VARIANTS:
        readout = make_readout(kind, args.tokens, args.nodes, args.labels, site, seed=1)
        if kind == "seqpool":
            with torch.no_grad():
                gen = torch.Generator().manual_seed(2)
                readout.pool.weight.copy_(torch.randn(readout.pool.weight.shape, generator=gen))
                readout.pool.bias.fill_(0.1)
        sil = silencing if silencing != "-" else "pre_pool"
        fast_readout = {"site": readout.to(device)}
        times = []
        for _ in range(args.repeats):
            sync(device)
            start = time.perf_counter()
            fast = snp.matrices(
                backbone,
                fast_readout,
                data,
                args.labels,
                sil,
                args.batch_size,
                args.chunk_size,
                device,
                progress=False,
                accuracy=False,
            )
            sync(device)
            times.append(time.perf_counter() - start)
        t_fast = min(times)
        cpu_readout = readout.cpu()
        start = time.perf_counter()
        ref = reference_node_matrices(cpu_readout, a64, y, args.labels, sil, nodes=nodes)
        t_ref_sub = time.perf_counter() - start
        t_ref = t_ref_sub / len(nodes) * args.nodes
        got = fast["site"].raw[nodes]
        rel = float((got - ref).abs().max() / ref.abs().max())
        row = {
            "readout": kind,
            "silencing": silencing,
            "vectorised_s": t_fast,
            "reference_s_measured": t_ref_sub,
            "reference_nodes_measured": len(nodes),
            "reference_s_extrapolated": t_ref,
            "speedup": t_ref / t_fast,
            "target_speedup": target,
            "max_rel_diff": rel,
        }
        rows.append(row)
        print(
            f"{kind:8s} {silencing:9s} vectorised {t_fast:8.3f} s  reference "
            f"{t_ref:10.1f} s ({len(nodes)} nodes measured, {t_ref_sub:.2f} s)  speedup "
            f"{row['speedup']:9.0f}x (target >= {target}x)  max rel diff {rel:.1e}",
            flush=True,
        )
    return rows


def bench_readouts(args: argparse.Namespace, device: torch.device) -> dict:
    torch.manual_seed(0)
    model = models.create("cct_7_3x1_32", num_classes=args.labels).eval()
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(args.readout_samples, 3, 32, 32, generator=gen)
    data = TensorDataset(x, torch.arange(args.readout_samples) % args.labels)
    config = ReadoutConfig(epochs=1, batch_size=args.readout_batch)
    out = {}
    for label, spec in (
        ("warmup", "mha,ff"),
        ("all_14", "mha,ff"),
        ("deepest_block6.ff", "block6.ff"),
        ("shallowest_block0.mha", "block0.mha"),
    ):
        sites = resolve(model, spec)
        sync(device)
        start = time.perf_counter()
        train_readouts(model, sites, data, args.labels, config, device, progress=False)
        sync(device)
        if label != "warmup":
            out[label] = {"sites": len(sites), "seconds": time.perf_counter() - start}
    out["ratio_all_vs_deepest"] = out["all_14"]["seconds"] / out["deepest_block6.ff"]["seconds"]
    out["ratio_all_vs_shallowest"] = (
        out["all_14"]["seconds"] / out["shallowest_block0.mha"]["seconds"]
    )
    print(
        f"readouts, {args.readout_samples} images, batch {args.readout_batch}: 14 sites "
        f"{out['all_14']['seconds']:.2f} s, block6.ff alone "
        f"{out['deepest_block6.ff']['seconds']:.2f} s (ratio "
        f"{out['ratio_all_vs_deepest']:.2f}x, target <= 1.5x), block0.mha alone "
        f"{out['shallowest_block0.mha']['seconds']:.2f} s (ratio "
        f"{out['ratio_all_vs_shallowest']:.2f}x)",
        flush=True,
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--nodes", type=int, default=256)
    parser.add_argument("--labels", type=int, default=100)
    parser.add_argument("--ref-nodes", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3, help="vectorised runs (min is kept)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--chunk-size", type=int, default=256)
    parser.add_argument("--readout-samples", type=int, default=512)
    parser.add_argument("--readout-batch", type=int, default=128)
    parser.add_argument("--skip-readouts", action="store_true")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--out", default="benchmarks/results_snp.json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    result = {
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "device": str(device),
            "gpu": torch.cuda.get_device_name() if device.type == "cuda" else None,
        },
        "args": vars(args),
        "note": "reference always on CPU in float64; vectorised on --device",
    }
    result["matrices"] = bench_matrices(args, device)
    if not args.skip_readouts:
        result["readouts"] = bench_readouts(args, device)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
