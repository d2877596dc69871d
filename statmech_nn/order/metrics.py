"""Order parameters as flat MLflow metrics under the naming scheme of docs/architecture.md.

Layers are named ``block{i}`` (``conv{i}`` for VGG). ``snr.{kind}.block{i}`` (the chosen SNR
variant and form), ``signal.{kind}.block{i}``,
``noise.{kind}.block{i}``, ``clusters.{kind}.block{i}`` (means over nodes with a cluster),
``cluster_size.{kind}.block{i}``; ``order.Q.block{i}``, ``order.Q_null_mean.block{i}``,
``order.Q_null_std.block{i}``, ``order.Q_z.block{i}``, ``order.Q_pvalue.block{i}``,
``order.owned_fraction.block{i}``, ``order.jaccard.block{i}``. NaN values (a layer without nodes
or clusters) are left out; an infinite SNR (clusters but no noise at all) is kept, and MLflow
stores it as the largest float.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping

import xarray as xr

from statmech_nn.naming import layer_label
from statmech_nn.order.stats import snr as select_snr
from statmech_nn.sites import Site
from statmech_nn.sites import layer_label as site_layer_label

SITE_METRICS = {
    "signal": "signal_clustered",
    "noise": "noise_clustered",
    "clusters": "clusters_clustered",
    "cluster_size": "cluster_size",
}

Labels = Mapping[tuple[str, int], str]


def layer_labels(ds: xr.Dataset) -> dict[tuple[str, int], str]:
    """``{(kind, layer): "block3" | "conv4" | "layer7"}`` from the SNP dataset's site specs.

    The labels of :func:`statmech_nn.sites.layer_label`, as in the snp run's ``acc.readout``
    metrics.
    """
    try:
        specs = json.loads(ds.attrs.get("site_specs") or "[]")
    except (TypeError, ValueError):
        specs = []
    out = {}
    for spec in specs:
        site = Site(
            str(spec.get("name", "")),
            str(spec["kind"]),
            int(spec["layer"]),
            str(spec.get("module", "")),
        )
        out[(site.kind, site.layer)] = site_layer_label(site)
    return out


def _label(labels: Labels | None, kind: str, layer: int) -> str:
    if labels and (kind, layer) in labels:
        return labels[(kind, layer)]
    return layer_label(kind, layer)


Q_METRICS = ("Q", "Q_null_mean", "Q_null_std", "Q_z", "Q_pvalue", "owned_fraction", "jaccard")


def _put(out: dict[str, float], name: str, value) -> None:
    value = float(value)
    if not math.isnan(value):
        out[name] = value


def site_metrics(
    stats: Mapping[str, xr.Dataset],
    snr_variant: str = "labels",
    snr_form: str = "ratio",
    labels: Labels | None = None,
) -> dict[str, float]:
    """Flat ``{metric name: value}`` of per-site statistics (``stats`` keyed by kind).

    ``labels`` (see :func:`layer_labels`) names the layers; default ``block{i}`` (``conv{i}``).
    """
    out: dict[str, float] = {}
    for kind, st in stats.items():
        snr = select_snr(st, snr_variant, snr_form)
        for i, layer in enumerate(st["layer"].values):
            name = _label(labels, kind, int(layer))
            _put(out, f"snr.{kind}.{name}", snr.values[i])
            for family, var in SITE_METRICS.items():
                _put(out, f"{family}.{kind}.{name}", st[var].values[i])
    return out


def symmetry_metrics(sym: xr.Dataset, labels: Labels | None = None) -> dict[str, float]:
    """Flat ``{metric name: value}`` of :func:`head_symmetry` output."""
    out: dict[str, float] = {}
    kind = str(sym.attrs.get("kind", "mha"))
    for i, layer in enumerate(sym["layer"].values):
        label = _label(labels, kind, int(layer))
        for name in Q_METRICS:
            if name in sym:
                _put(out, f"order.{name}.{label}", sym[name].values[i])
    return out
