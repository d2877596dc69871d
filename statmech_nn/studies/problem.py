"""The ANDC problem: cached readout inputs and SNP diagonals, masks and their evaluation."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from statmech_nn.errors import SchemaError
from statmech_nn.fileio import atomic_write_text
from statmech_nn.pruning.features import FeatureCache, SiteFeatures
from statmech_nn.pruning.masks import (
    andc_keep,
    check_variant,
    pruned_fraction_of,
    theta_per_layer,
    valid_from_diagonals,
)

PROBLEM_SCHEMA = "statmech-nn.andc-problem/1"


@dataclass
class AndcProblem:
    """Everything an ANDC trial needs, kept in one folder (loaded once per worker process).

    ``diag[layer, node, label]``: SNP diagonals ``M_n[j, j]`` of the studied sites (NaN for
    padded nodes), aligned with ``cache.layers``; ``site_names`` name the layers (for parameter
    names such as ``theta.block6``). ``variant="cluster"`` also keeps the full matrices.
    """

    cache: FeatureCache
    diag: np.ndarray
    site_names: list[str]
    kind: str = "ff"
    variant: str = "diagonal"
    min_cluster_size: int = 1
    matrices: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_variant(self.variant)
        self.valid = valid_from_diagonals(self.diag)
        self.base = self.cache.base_accuracy()
        self.base_accuracy = float(np.mean([self.base[layer] for layer in self.cache.layers]))

    @property
    def layers(self) -> list[int]:
        return self.cache.layers

    def keep(self, thetas: np.ndarray) -> np.ndarray:
        """ANDC masks ``[layer, node, label]`` for one threshold per layer (the pruning core)."""
        return andc_keep(
            np.asarray(thetas, dtype=np.float64),
            self.diag,
            self.matrices,
            self.variant,
            self.min_cluster_size,
            self.valid,
        )

    def evaluate(self, theta: float | Sequence[float] | np.ndarray) -> dict[str, float]:
        """Masked readout accuracy (mean over sites), its drop, and the pruned fraction."""
        keep = self.keep(theta_per_layer(theta, self.layers))
        real = self.valid[..., None]
        per_layer = np.asarray(pruned_fraction_of(keep, real, axis=(1, 2)))
        out: dict[str, float] = {}
        accs = []
        for i, layer in enumerate(self.layers):
            acc = float(self.cache.accuracy(layer, keep[i]))
            accs.append(acc)
            out[f"andc.accuracy.{self.site_names[i]}"] = acc
            out[f"andc.pruned_fraction.{self.site_names[i]}"] = float(per_layer[i])
        out["andc.accuracy"] = float(np.mean(accs))
        out["andc.base_accuracy"] = self.base_accuracy
        out["andc.accuracy_drop"] = self.base_accuracy - out["andc.accuracy"]
        out["andc.pruned_fraction"] = float(pruned_fraction_of(keep, real))
        return out

    def save(self, folder: str | Path) -> Path:
        """Write the problem to ``folder`` (cache, diagonals, matrices, ``problem.json``)."""
        folder = Path(folder)
        self.cache.save(folder / "cache")
        np.save(folder / "diag.npy", self.diag.astype(np.float32))
        if self.matrices is not None:
            np.save(folder / "matrices.npy", self.matrices.astype(np.float32))
        meta = {
            "schema": PROBLEM_SCHEMA,
            "site_names": list(self.site_names),
            "kind": self.kind,
            "variant": self.variant,
            "min_cluster_size": self.min_cluster_size,
            **self.meta,
        }
        atomic_write_text(folder / "problem.json", json.dumps(meta, indent=2))
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> AndcProblem:
        """Read a problem written by :meth:`save` (its cache memory-mapped)."""
        folder = Path(folder)
        path = folder / "problem.json"
        if not path.is_file():
            raise SchemaError(f"{folder} holds no ANDC problem (no problem.json)")
        meta = json.loads(path.read_text(encoding="utf-8"))
        if meta.pop("schema", None) != PROBLEM_SCHEMA:
            raise SchemaError(f"{path} is not an ANDC problem ({PROBLEM_SCHEMA})")
        matrices_path = folder / "matrices.npy"
        return cls(
            cache=FeatureCache.load(folder / "cache"),
            diag=np.load(folder / "diag.npy", allow_pickle=False),
            site_names=meta.pop("site_names"),
            kind=meta.pop("kind"),
            variant=meta.pop("variant"),
            min_cluster_size=int(meta.pop("min_cluster_size")),
            matrices=(
                np.load(matrices_path, allow_pickle=False) if matrices_path.is_file() else None
            ),
            meta=meta,
        )


_PROBLEMS: dict[str, AndcProblem] = {}


def load_problem(folder: str | Path) -> AndcProblem:
    """:meth:`AndcProblem.load`, memoised per process (workers load their problem once)."""
    key = str(Path(folder).resolve())
    if key not in _PROBLEMS:
        _PROBLEMS[key] = AndcProblem.load(key)
    return _PROBLEMS[key]


def post_pool_diagonals(cache: FeatureCache) -> np.ndarray:
    """SNP diagonals ``M_n[j, j] / max M_n`` computed from a pooled cache (``post_pool``).

    ``M_n[i, j] = W[j, n] * mean_{b: y_b = i} X[b, n]``; exact for ``mean`` readouts and for
    ``seqpool`` with ``silencing="post_pool"``. Used for synthetic problems and checks.
    """
    out = []
    labels = np.asarray(cache.labels)
    for layer in cache.layers:
        site = cache.sites[layer]
        if site.form != "pooled":
            raise SchemaError("post_pool_diagonals needs pooled features (seqpool or mean)")
        x = np.asarray(site.inputs, dtype=np.float64)
        w = np.asarray(site.weight, dtype=np.float64)
        n_labels = w.shape[0]
        means = np.stack([x[labels == i].mean(0) for i in range(n_labels)])  # [i, n]
        m = means.T[:, :, None] * w.T[:, None, :]  # [n, i, j]
        scale = m.reshape(m.shape[0], -1).max(-1)
        safe = np.where(scale > 0, scale, 1.0)
        norm = np.where(scale[:, None, None] > 0, m / safe[:, None, None], 0.0)
        out.append(np.diagonal(norm, axis1=1, axis2=2))
    return np.stack(out).astype(np.float32)


def synthetic_problem(
    layers: int = 2,
    nodes: int = 32,
    labels: int = 10,
    samples: int = 600,
    seed: int = 0,
    labels_per_node: tuple[int, int] = (2, 6),
) -> AndcProblem:
    """A small ANDC problem with SNP-like structure, for tests, benchmarks and demos.

    Node ``n`` responds to a random label set ``D_n``: its pooled input is positive mainly on
    samples of those labels (noise falls with depth), and the readout weight ``W[j, n]`` is large
    for ``j`` in ``D_n``. Diagonals follow from :func:`post_pool_diagonals`.
    """
    rng = np.random.default_rng(seed)
    y = rng.integers(0, labels, samples)
    sites = {}
    for layer in range(layers):
        members = np.zeros((nodes, labels), dtype=bool)
        for n in range(nodes):
            k = int(rng.integers(labels_per_node[0], labels_per_node[1] + 1))
            members[n, rng.choice(labels, size=min(k, labels), replace=False)] = True
        noise = 1.0 / (1.0 + layer)
        signal = members[:, y].T.astype(np.float32)  # [b, n]
        x = np.maximum(signal + noise * rng.standard_normal((samples, nodes)), 0.0)
        w = members.T * rng.uniform(0.5, 1.5, (labels, nodes)) + 0.15 * rng.standard_normal(
            (labels, nodes)
        )
        sites[layer] = SiteFeatures("pooled", x.astype(np.float32), w.astype(np.float32))
    cache = FeatureCache(labels=y.astype(np.int64), sites=sites, meta={"synthetic": True})
    return AndcProblem(
        cache=cache,
        diag=post_pool_diagonals(cache),
        site_names=[f"block{i}" for i in range(layers)],
        meta={"synthetic": True},
    )
