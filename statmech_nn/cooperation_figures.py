"""Figures of a cooperation result (methods.md section 11): Agg backend, PNG; each returns its path.

All take the stacked dataset of :func:`statmech_nn.cooperation_store.stack_layers` (dims
``layer``, ``size``, ``draw``, ``node``): :func:`accuracy_curve` (``A(n)`` with its spread over
draws and the random guess), :func:`label_counts` (labels a subset recognises beside the union of
its members' ``D_n``) and :func:`node_bound` (per node the labels it can ever output beside
``|D_n|``, and both means along depth).
"""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import xarray as xr  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from statmech_nn.figures import save_figure  # noqa: E402

FIGURES = ("accuracy_curve", "label_counts", "node_bound")
"""The figure file stems :func:`all_figures` writes (``{stem}_{kind}.png``)."""


def _colours(n: int) -> list:
    cmap = plt.get_cmap("viridis")
    return [cmap(v) for v in np.linspace(0.0, 0.9, max(n, 1))]


def _size_axis(ax, sizes: np.ndarray) -> None:
    """Subset sizes on a log2 axis, ticks at the sizes themselves."""
    ax.set_xscale("log", base=2)
    ax.set_xticks(sizes)
    ax.set_xticklabels([str(int(s)) for s in sizes])
    ax.grid(alpha=0.3)


def accuracy_curve(ds: xr.Dataset, path: str | os.PathLike) -> Path:
    """``A(n)`` against subset size per layer: mean over draws, a band of +-1 std, and ``1/L``."""
    kind, sizes = ds.attrs.get("kind", ""), ds["size"].values
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for colour, layer in zip(_colours(ds.sizes["layer"]), ds["layer"].values, strict=True):
        acc = ds["accuracy"].sel(layer=layer)
        mean, std = acc.mean("draw").values, acc.std("draw").values
        ax.plot(sizes, mean, "o-", color=colour, label=f"layer {int(layer)}")
        ax.fill_between(sizes, mean - std, mean + std, color=colour, alpha=0.2, linewidth=0)
    chance = float(ds.attrs["chance"])
    ax.axhline(chance, color="grey", linestyle="--", label=f"random guess 1/L = {chance:.3g}")
    _size_axis(ax, sizes)
    ax.set(
        xlabel="nodes in the subset n",
        ylabel="test accuracy A(n)",
        title=f"Subset readout accuracy ({kind}; draws per size: {ds.sizes['draw']}, band ±1 std)",
        ylim=(0.0, 1.02),
    )
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def label_counts(ds: xr.Dataset, path: str | os.PathLike) -> Path:
    """Labels a subset's readout recognises (solid) beside the union of its members' D_n."""
    kind, sizes = ds.attrs.get("kind", ""), ds["size"].values
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for colour, layer in zip(_colours(ds.sizes["layer"]), ds["layer"].values, strict=True):
        at = ds.sel(layer=layer)
        rec, uni = at["recognised_labels"].mean("draw"), at["union_labels"].mean("draw")
        ax.plot(sizes, rec.values, "o-", color=colour, label=f"layer {int(layer)}: recognised")
        ax.plot(sizes, uni.values, "s--", color=colour, label=f"layer {int(layer)}: union of D_n")
    _size_axis(ax, sizes)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(
        xlabel="nodes in the subset n",
        ylabel="labels (mean over draws)",
        title=f"Recognised labels vs union of single-node labels ({kind}, theta = "
        f"{float(ds.attrs.get('theta', float('nan'))):.2g})",
        ylim=(0, ds.sizes["label"] + 0.5),
    )
    ax.legend(fontsize=7, ncol=2)
    return save_figure(fig, path)


def node_bound(ds: xr.Dataset, path: str | os.PathLike, seed: int = 0) -> Path:
    """Per node the labels it can ever output against ``|D_n|``, and both means along depth."""
    kind = ds.attrs.get("kind", "")
    rng = np.random.default_rng(seed)
    fig, (ax_node, ax_depth) = plt.subplots(1, 2, figsize=(11, 4.2))
    layers = ds["layer"].values
    top = 1
    for colour, layer in zip(_colours(len(layers)), layers, strict=True):
        at = ds.sel(layer=layer)
        diag = at["diagonal_labels"].values.astype(float)
        bound = at["output_labels"].values.astype(float)
        top = max(top, int(np.nanmax(bound, initial=0)), int(np.nanmax(diag, initial=0)))
        jitter = rng.uniform(-0.15, 0.15, size=(2, len(diag)))
        ax_node.scatter(
            diag + jitter[0],
            bound + jitter[1],
            s=12,
            color=colour,
            alpha=0.7,
            label=f"layer {layer}",
        )
    ax_node.plot([0, top], [0, top], color="grey", linestyle=":", label="bound = |D_n|")
    ax_node.set(
        xlabel="labels the node recognises |D_n|",
        ylabel="labels the node can ever output",
        title=f"Single-node bound per node ({kind}, jittered)",
    )
    ax_node.legend(fontsize=7)
    ax_depth.plot(layers, ds["output_labels"].mean("node").values, "o-", label="can output")
    ax_depth.plot(layers, ds["diagonal_labels"].mean("node").values, "s--", label="|D_n|")
    ax_depth.set(
        xlabel="layer", ylabel="labels per node (mean)", title="Single-node bound along depth"
    )
    for ax in (ax_node, ax_depth):
        ax.grid(alpha=0.3)
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax_node.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_depth.set_xticks(layers)
    ax_depth.set_ylim(0, top + 0.5)
    ax_depth.legend(fontsize=8)
    return save_figure(fig, path)


def all_figures(ds: xr.Dataset, folder: str | os.PathLike) -> list[Path]:
    """The three figures of ``ds`` in ``folder`` as ``{stem}_{kind}.png``."""
    kind = ds.attrs.get("kind", "site")
    folder = Path(folder)
    makers = {
        "accuracy_curve": accuracy_curve,
        "label_counts": label_counts,
        "node_bound": node_bound,
    }
    return [make(ds, folder / f"{stem}_{kind}.png") for stem, make in makers.items()]
