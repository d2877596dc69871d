"""Benchmark the order parameters from 100 to 1000 labels (issue 11 item 4); one process, ratios.

``order.site_statistics`` + ``order.head_symmetry`` (1000 permutations) of one ``mha`` site kind
of CCT-7/3x1 shape (7 layers x 256 nodes in 4 heads) at ``--labels`` (default 100 and 1000).
Matrices are synthetic but shaped like measured SNP matrices: a below-threshold background,
each node recognising about 4 % of the labels (``Binomial(L, 0.04)``), most of them planted in
small mutual blocks (clusters of 1-4 labels), plus about 0.3 % above-threshold noise elements;
every node is normalised to a maximum of 1. The sizes run interleaved (small, large, small, ...)
and each keeps its fastest of ``--repeats`` timings, so the ratio is measured under the same load.
Peak memory is measured in a separate call under ``tracemalloc`` (numpy reports its buffers to
it): the largest amount allocated *during* the call, next to the size of the SNP tensor that was
already in memory. Targets: time(1000) <= ~150 x time(100) (the matrices grow 100x), peak
memory < 2 x the SNP tensor.

Usage: ``python benchmarks/order_scale.py [--labels 100 1000] [--nodes 256] [--out FILE]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import time
import tracemalloc
from pathlib import Path

import numpy as np
import xarray as xr

from statmech_nn import order

HEADS = 4


def synthetic_snp(layers: int, nodes: int, labels: int, seed: int = 0) -> xr.Dataset:
    """An SNP dataset of one ``mha`` kind with sparse, cluster-shaped normalised matrices."""
    rng = np.random.default_rng(seed)
    values = np.empty((layers, nodes, labels, labels), dtype=np.float32)
    for layer in range(layers):
        for node in range(nodes):
            m = values[layer, node]
            m[...] = rng.random((labels, labels), dtype=np.float32)
            m *= 0.5
            m -= 0.25
            _plant(m, rng)
    head = np.arange(nodes) * HEADS // nodes
    idx = np.arange(labels)
    return xr.Dataset(
        {"snp_mha": (("layer", "node", "label_true", "label_out"), values)},
        coords={
            "layer": np.arange(layers),
            "node": np.arange(nodes),
            "head": ("node", head),
            "label_true": idx,
            "label_out": idx,
        },
    )


def _plant(m: np.ndarray, rng: np.random.Generator) -> None:
    labels = m.shape[0]
    recognised = rng.permutation(labels)[: rng.binomial(labels, 0.04)]
    start = 0
    while start < recognised.size:
        size = int(rng.integers(1, 5))
        block = recognised[start : start + size]
        m[np.ix_(block, block)] = rng.uniform(0.35, 1.0, (block.size, block.size))
        start += size
    noise = rng.integers(0, labels * labels, rng.binomial(labels * labels, 0.003))
    m.flat[noise] = rng.uniform(0.31, 1.0, noise.size)
    m /= m.max()


def analyse(ds: xr.Dataset, permutations: int) -> None:
    order.site_statistics(ds, "mha", 0.3)
    order.head_symmetry(ds, 0.3, "mha", permutations=permutations, seed=0)


def timed(ds: xr.Dataset, permutations: int) -> float:
    start = time.perf_counter()
    analyse(ds, permutations)
    return time.perf_counter() - start


def peak_bytes(ds: xr.Dataset, permutations: int) -> int:
    tracemalloc.start()
    tracemalloc.reset_peak()
    analyse(ds, permutations)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labels", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--layers", type=int, default=7)
    parser.add_argument("--nodes", type=int, default=256)
    parser.add_argument("--permutations", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    built = {}
    for labels in args.labels:
        start = time.perf_counter()
        built[labels] = synthetic_snp(args.layers, args.nodes, labels)
        print(f"built {labels} labels in {time.perf_counter() - start:.1f} s", flush=True)
    times = {labels: [] for labels in args.labels}
    for _ in range(args.repeats):
        for labels in args.labels:
            times[labels].append(timed(built[labels], args.permutations))
            print(f"{labels} labels: {times[labels][-1]:.3f} s", flush=True)
    rows = []
    for labels in args.labels:
        ds = built[labels]
        stats = order.site_statistics(ds, "mha", 0.3)
        tensor = int(ds["snp_mha"].nbytes)
        peak = peak_bytes(ds, args.permutations)
        rows.append(
            {
                "labels": labels,
                "seconds": min(times[labels]),
                "all_seconds": times[labels],
                "snp_bytes": tensor,
                "peak_bytes": peak,
                "peak_over_snp": peak / tensor,
                "mean_signal": float(stats["signal"].mean()),
                "mean_clusters": float(stats["n_clusters"].mean()),
                "mean_noise": float(stats["noise"].mean()),
            }
        )
    base = rows[0]
    for row in rows:
        row["time_ratio"] = row["seconds"] / base["seconds"]
        row["size_ratio"] = (row["labels"] / base["labels"]) ** 2
    result = {
        "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "layers": args.layers,
        "nodes": args.nodes,
        "permutations": args.permutations,
        "max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rows": rows,
    }
    print(
        "| labels | time (s) | time ratio | matrix ratio | SNP tensor | peak in call | peak/SNP |"
    )
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['labels']} | {row['seconds']:.2f} | {row['time_ratio']:.1f}x | "
            f"{row['size_ratio']:.0f}x | {row['snp_bytes'] / 2**20:.0f} MiB | "
            f"{row['peak_bytes'] / 2**20:.0f} MiB | {row['peak_over_snp']:.3f} |"
        )
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
