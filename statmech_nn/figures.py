"""Matplotlib figures (Agg backend, PNG) of the order parameters; each returns the saved path."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import xarray as xr  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402


def save_figure(fig: Any, path: str | os.PathLike) -> Path:
    """Write ``fig`` to ``path`` (folders made) at the toolkit's one resolution, and close it."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(target, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return target


def depth_profile(
    stats: Mapping[str, xr.Dataset], path: str | os.PathLike, snr_variant: str = "labels"
) -> Path:
    """Readout accuracy and SNR along depth, one line per site kind.

    ``stats`` maps kind to :func:`statmech_nn.order.site_statistics` output (``accuracy`` is
    plotted when present).
    """
    fig, (ax_acc, ax_snr) = plt.subplots(1, 2, figsize=(10, 3.8))
    for kind, st in stats.items():
        layer = st["layer"].values
        if "accuracy" in st:
            ax_acc.plot(layer, st["accuracy"].values, "o-", label=kind)
        snr = st[f"snr_{snr_variant}"].values.astype(float)
        ax_snr.plot(layer, np.where(np.isfinite(snr), snr, np.nan), "o-", label=kind)
    ax_acc.set(
        xlabel="block", ylabel="readout accuracy (test)", title="Readout accuracy along depth"
    )
    ax_snr.set(
        xlabel="block", ylabel=f"SNR ({snr_variant} variant)", title="Signal-to-noise along depth"
    )
    for ax in (ax_acc, ax_snr):
        ax.grid(alpha=0.3)
        _integer_ticks(ax, layer)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(title="site", fontsize=8)
    theta = _theta_of(stats)
    if theta is not None:
        fig.suptitle(f"Accuracy and SNR along depth (theta = {theta:g})", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def _theta_of(stats: Mapping[str, xr.Dataset]) -> float | None:
    for st in stats.values():
        if "theta" in st.attrs:
            return float(st.attrs["theta"])
    return None


def _integer_ticks(ax, values) -> None:
    """Integer ticks on x; exactly the values when there are few (no 0.95..1.05 for one)."""
    values = np.unique(np.asarray(values, float))
    if 0 < len(values) <= 12:
        ax.set_xticks(values)
        if len(values) == 1:
            ax.set_xlim(values[0] - 1, values[0] + 1)
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def node_gallery(
    binary: xr.DataArray, path: str | os.PathLike, nodes_per_layer: int = 4, seed: int = 0
) -> Path:
    """Binarised node matrices ``(layer, node, label_true, label_out)``: a few nodes per layer.

    Nodes are drawn at random (seeded) among the real nodes of each layer (NaN padding skipped
    when ``binary`` carries a ``valid (layer, node)`` coordinate).
    """
    layers = binary.sizes["layer"]
    cols = min(nodes_per_layer, binary.sizes["node"])
    fig, axes = plt.subplots(
        layers, cols, figsize=(1.6 * cols + 0.6, 1.6 * layers + 0.4), squeeze=False
    )
    rng = np.random.default_rng(seed)
    for i in range(layers):
        layer = binary.isel(layer=i)
        pool = np.arange(binary.sizes["node"])
        if "valid" in layer.coords:
            pool = pool[layer["valid"].values.astype(bool)]
        chosen = np.sort(rng.choice(pool, size=min(cols, len(pool)), replace=False))
        for j in range(cols):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j < len(chosen):
                ax.imshow(layer.isel(node=int(chosen[j])).values, cmap="Greys", vmin=0, vmax=1)
                ax.set_title(f"block {int(binary['layer'][i])}, node {int(chosen[j])}", fontsize=7)
                if j == 0:
                    ax.set_ylabel("true label", fontsize=7)
                if i == layers - 1:
                    ax.set_xlabel("output label", fontsize=7)
            else:
                ax.axis("off")
    kind = _kind_of_name(binary.name)
    theta = binary.attrs.get("theta", "?")
    fig.suptitle(f"Binarised {kind} node matrices, black: M / max(M) > theta = {theta}", fontsize=9)
    return save_figure(fig, path)


def _kind_of_name(name) -> str:
    """``ff`` from ``snp_ff_binary`` (the name binarisation gives), else "node"."""
    text = str(name or "")
    if text.startswith("snp_"):
        return text[len("snp_") :].removesuffix("_binary")
    return "node"


def expertise_heatmaps(sym: xr.Dataset, path: str | os.PathLike) -> Path:
    """Head x label expertise counts per block, titled with Q and its null band, plus Q vs depth.

    ``sym`` is :func:`statmech_nn.order.head_symmetry` output.
    """
    layers = sym.sizes["layer"]
    cols = min(4, layers + 1)
    rows = math.ceil((layers + 1) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.4 * rows), squeeze=False)
    flat = axes.ravel()
    for i in range(layers):
        s = sym.isel(layer=i)
        ax = flat[i]
        im = ax.imshow(s["counts"].values, aspect="auto", cmap="viridis", interpolation="nearest")
        ax.set_title(
            f"block {int(s['layer'])}: Q={float(s['Q']):.3f}\n"
            f"null {float(s['Q_null_mean']):.3f}±{float(s['Q_null_std']):.3f}, "
            f"p={float(s['Q_pvalue']):.3g}",
            fontsize=8,
        )
        ax.set_xlabel("label")
        ax.set_ylabel("head")
        ax.set_yticks(range(s.sizes["head"]))
        bar = fig.colorbar(im, ax=ax, fraction=0.046)
        bar.set_label("nodes recognising the label", fontsize=7)
    ax = flat[layers]
    _q_with_band(ax, sym["layer"].values, sym["Q"], sym["Q_null_mean"], sym["Q_null_std"])
    ax.set(xlabel="block", ylabel="Q", title="Q along depth beside its null band")
    for extra in flat[layers + 1 :]:
        extra.axis("off")
    kind, theta = sym.attrs.get("kind", "mha"), sym.attrs.get("theta", "?")
    fig.suptitle(f"Expertise of the {kind} heads per label (theta = {theta})", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def _q_with_band(ax, x, q, mean, std) -> None:
    """Q against ``x`` beside the null band, on a y range that fits both (not a fixed 0..1)."""
    mean, std = np.asarray(mean, float), np.asarray(std, float)
    q = np.asarray(q, float)
    low, high = mean - 2 * std, mean + 2 * std
    ax.fill_between(x, low, high, color="grey", alpha=0.3, label="null mean ± 2σ")
    ax.plot(x, mean, "--", color="grey", label="null mean")
    ax.plot(x, q, "o-", color="C3", label="Q")
    ax.set_ylim(*q_limits(q, low, high))
    _integer_ticks(ax, x)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def q_limits(q, low, high) -> tuple[float, float]:
    """A y range holding every Q and the whole null band with a margin, inside [0, 1]."""
    values = np.concatenate([np.ravel(q), np.ravel(low), np.ravel(high)])
    values = values[np.isfinite(values)]
    if values.size == 0:
        return 0.0, 1.0
    lo, hi = float(values.min()), float(values.max())
    margin = max(0.1 * (hi - lo), 0.01)
    return max(lo - margin, 0.0), min(hi + margin, 1.0)


def q_over_training(q: xr.Dataset, path: str | os.PathLike) -> Path:
    """``Q`` against epoch, one panel per block, with the null band.

    ``q`` has variables ``Q``, ``Q_null_mean``, ``Q_null_std`` with dims ``(epoch, layer)``.
    """
    layers = q.sizes["layer"]
    cols = min(4, layers)
    rows = math.ceil(layers / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 2.6 * rows), squeeze=False)
    flat = axes.ravel()
    epoch = q["epoch"].values
    for i in range(layers):
        s = q.isel(layer=i)
        _q_with_band(flat[i], epoch, s["Q"], s["Q_null_mean"], s["Q_null_std"])
        flat[i].set(xlabel="epoch", ylabel="Q", title=f"block {int(q['layer'][i])}")
    for extra in flat[layers:]:
        extra.axis("off")
    kind = q.attrs.get("kind", "mha")
    fig.suptitle(f"Head symmetry breaking of the {kind} heads over training: Q beside its null")
    fig.tight_layout()
    return save_figure(fig, path)


SCALING_LABELS = {"error": "error rate", "snr": "SNR", "cluster_size": "cluster size"}


def scaling_curves(result: xr.Dataset, path: str | os.PathLike) -> Path:
    """Error and SNR against the number of labels K (draws as points, the linear fit as a line).

    ``result`` is :func:`statmech_nn.scaling.scaling` output.
    """
    names = [n for n in ("error", "snr", "cluster_size") if n in result]
    fig, axes = plt.subplots(1, len(names), figsize=(3.8 * len(names), 3.4), squeeze=False)
    k = result["K"].values.astype(float)
    for ax, name in zip(axes.ravel(), names, strict=True):
        values = result[name].values
        for d in range(values.shape[1]):
            ax.plot(k, values[:, d], "o", color="C0", alpha=0.6)
        slope, intercept = float(result[f"{name}_slope"]), float(result[f"{name}_intercept"])
        ax.plot(k, intercept + slope * k, "-", color="C3")
        ax.set(
            xlabel="K (labels)",
            ylabel=SCALING_LABELS.get(name, name),
            title=f"{SCALING_LABELS.get(name, name)} against K: R² = "
            f"{float(result[f'{name}_r2']):.2f}",
        )
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)


def training_curves(series: Mapping[str, list[tuple[int, float]]], path: str | os.PathLike) -> Path:
    """Accuracy and loss against epoch of the ``{metric: [(epoch, value), ...]}`` histories."""
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(10, 3.6))
    epochs: list[int] = []
    for key, points in series.items():
        ax = ax_acc if key.endswith("acc") else ax_loss
        split = key.split("_")[0]
        ax.plot([p[0] for p in points], [p[1] for p in points], "o-", ms=3, label=split)
        epochs.extend(p[0] for p in points)
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="Accuracy during training")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy loss", title="Loss during training")
    for ax in (ax_acc, ax_loss):
        ax.grid(alpha=0.3)
        _integer_ticks(ax, epochs)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(title="split", fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def superclass_alignment(
    aligned: Mapping[str, xr.Dataset], chance: float, path: str | os.PathLike
) -> Path:
    """Pair purity along depth per site kind and grouping, beside the null band and chance."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2), squeeze=False)
    for ax, grouping in zip(axes[0], ("cluster", "node"), strict=True):
        for i, (kind, ds) in enumerate(aligned.items()):
            layers = ds["layer"].values
            mean, std = ds[f"{grouping}_null_mean"].values, ds[f"{grouping}_null_std"].values
            ax.fill_between(layers, mean - 2 * std, mean + 2 * std, color=f"C{i}", alpha=0.15)
            ax.plot(layers, ds[f"{grouping}_purity"].values, "o-", color=f"C{i}", label=kind)
        ax.axhline(chance, color="grey", ls=":", label="chance")
        _integer_ticks(ax, next(iter(aligned.values()))["layer"].values)
        ax.set(xlabel="block", ylabel="same-superclass pair fraction", title=f"{grouping} pairs")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("Labels grouped by single nodes against the superclasses (band: null ± 2σ)")
    fig.tight_layout()
    return save_figure(fig, path)
