"""The SNP ``xarray.Dataset`` (docs/architecture.md) and its binarisation.

:func:`compute` trains the readouts and builds the Dataset of normalised single-node and
single-head matrices for any ``nn.Module``; :func:`binarize` applies the one strict threshold
comparison (:func:`statmech_nn.naming.exceeds`). Pure: no MLflow, no files.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import xarray as xr
from torch import nn

from statmech_nn.errors import ConfigError, UnknownNameError
from statmech_nn.naming import check_theta, exceeds
from statmech_nn.readout import Readout, ReadoutConfig, train_readouts
from statmech_nn.sites import Site, resolve
from statmech_nn.snp.engine import SiteMatrices, check_options, matrices, normalise

__all__ = ["SCHEMA", "binarize", "build_dataset", "compute"]

SCHEMA = "statmech-nn.snp/1"
"""The ``schema`` attr of every SNP Dataset (checked by :func:`statmech_nn.snp.validate`)."""

MATRIX_PREFIXES = ("snp_", "head_snp_")


def _version() -> str:
    try:
        from statmech_nn import __version__

        return __version__
    except ImportError:  # pragma: no cover
        return "unknown"


def _class_names(class_names: Sequence[str] | None, num_labels: int) -> list[str]:
    """The label names, ``0..L-1`` by default; :class:`ConfigError` for a wrong count."""
    names = list(class_names) if class_names is not None else [str(i) for i in range(num_labels)]
    if len(names) != num_labels:
        raise ConfigError(f"{len(names)} class names for {num_labels} labels")
    return names


def _label_coords(layers: Sequence[int], names: Sequence[str]) -> dict[str, Any]:
    """The ``layer``, ``label_true`` / ``label_out`` coords and the label names on them."""
    num_labels = len(names)
    return {
        "layer": ("layer", np.asarray(layers, dtype=np.int64)),
        "label_true": ("label_true", np.arange(num_labels)),
        "label_out": ("label_out", np.arange(num_labels)),
        "label_name_true": ("label_true", np.asarray(names, dtype=str)),
        "label_name_out": ("label_out", np.asarray(names, dtype=str)),
    }


def _head_count(kind: str, items: Sequence[SiteMatrices]) -> int | None:
    """The one head count of a kind's layers (None without heads); differing counts raise."""
    heads = {m.head_raw.shape[0] for m in items if m.head_raw is not None}
    if len(heads) > 1:
        raise ValueError(f"layers of kind {kind!r} have different head counts {sorted(heads)}")
    return heads.pop() if heads else None


def _kind_variables(
    kind: str,
    items: Sequence[SiteMatrices],
    layers: Sequence[int],
    width: int,
    node_dim: str,
    head_dim: str | None,
    heads: int | None,
) -> dict[str, Any]:
    """``snp_``, ``scale_``, ``acc_``, ``node_count_`` (and ``head_snp_``) of one kind.

    Layers without this kind and nodes beyond a layer's width are NaN.
    """
    num_labels = items[0].raw.shape[1]
    index = {layer: i for i, layer in enumerate(layers)}
    snp = np.full((len(layers), width, num_labels, num_labels), np.nan, np.float32)
    scale = np.full((len(layers), width), np.nan, np.float32)
    acc = np.full(len(layers), np.nan)
    count = np.zeros(len(layers), np.int64)
    hsnp = None
    if heads is not None:
        hsnp = np.full((len(layers), heads, num_labels, num_labels), np.nan, np.float32)
    for m in items:
        li, n = index[m.site.layer], m.raw.shape[0]
        norm, s = normalise(m.raw)
        snp[li, :n] = norm.numpy()
        scale[li, :n] = s.numpy()
        acc[li] = m.accuracy
        count[li] = n
        if hsnp is not None and m.head_raw is not None:
            hsnp[li] = normalise(m.head_raw)[0].numpy()
    out: dict[str, Any] = {
        f"snp_{kind}": (("layer", node_dim, "label_true", "label_out"), snp),
        f"scale_{kind}": (("layer", node_dim), scale),
        f"acc_{kind}": (("layer",), acc),
        f"node_count_{kind}": (("layer",), count),
    }
    if hsnp is not None:
        out[f"head_snp_{kind}"] = (("layer", head_dim, "label_true", "label_out"), hsnp)
    return out


def _site_specs(sites: Sequence[Site]) -> str:
    """The sites as the JSON list stored in the ``site_specs`` attr."""
    fields = ("name", "kind", "layer", "module", "hook", "layout", "heads")
    return json.dumps([{f: getattr(s, f) for f in fields} for s in sites])


def _attrs(
    sites: Sequence[Site],
    kinds: Sequence[str],
    n_samples: int,
    readout: str,
    silencing: str,
    split: str,
    readout_config: str,
    attrs: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """The Dataset attrs: schema, analysis choices, sites, provenance defaults, then ``attrs``."""
    base: dict[str, Any] = {
        "schema": SCHEMA,
        "readout": readout,
        "silencing": silencing if readout == "seqpool" else "none",
        "split": split,
        "n_samples": n_samples,
        "sites": [s.name for s in sites],
        "kinds": list(kinds),
        "site_specs": _site_specs(sites),
        "model": "",
        "dataset": "",
        "checkpoint": "",
        "checkpoint_epoch": -1,
        "mlflow_run_id": "",
        "readout_config": readout_config,
        "statmech_nn_version": _version(),
    }
    for key, value in (attrs or {}).items():
        base[key] = json.dumps(value) if isinstance(value, dict) else value
    return base


def build_dataset(
    results: Mapping[str, SiteMatrices],
    class_names: Sequence[str] | None = None,
    *,
    readout: str,
    silencing: str,
    split: str = "test",
    readout_config: str = "{}",
    attrs: Mapping[str, Any] | None = None,
) -> xr.Dataset:
    """The SNP ``xarray.Dataset`` of docs/architecture.md from per-site matrices.

    Layers of all kinds share the ``layer`` dim (the union of their layers; a kind missing at a
    layer is NaN there). Layers of one kind narrower than its widest are NaN-padded, with the real
    width in ``node_count_{kind}``. The first kind with heads owns the ``head`` coord (on its node
    dim) and ``head`` dim; others use ``head_{kind}``.
    """
    if not results:
        raise ValueError("no site matrices to store")
    first = next(iter(results.values()))
    by_kind: dict[str, list[SiteMatrices]] = {}
    for m in results.values():
        by_kind.setdefault(m.site.kind, []).append(m)
    layers = sorted({m.site.layer for m in results.values()})
    coords = _label_coords(layers, _class_names(class_names, first.raw.shape[1]))
    data_vars: dict[str, Any] = {}
    first_width = max(m.raw.shape[0] for m in next(iter(by_kind.values())))
    head_owner = None
    for kind, items in by_kind.items():
        width = max(m.raw.shape[0] for m in items)
        node_dim = "node" if width == first_width else f"node_{kind}"
        coords.setdefault(node_dim, (node_dim, np.arange(width)))
        heads = _head_count(kind, items)
        head_dim = None
        if heads is not None:
            head_dim = "head" if head_owner is None else f"head_{kind}"
            head_owner = head_owner or kind
            coords[head_dim] = (node_dim, np.arange(width) // (width // heads))
        data_vars.update(_kind_variables(kind, items, layers, width, node_dim, head_dim, heads))
    data_vars["count_label"] = (("label_true",), first.counts.numpy().astype(np.int64))
    sites = [m.site for m in results.values()]
    n_samples = int(first.counts.sum())
    info = _attrs(sites, list(by_kind), n_samples, readout, silencing, split, readout_config, attrs)
    return xr.Dataset(data_vars, coords=coords, attrs=info)


def compute(
    model: nn.Module,
    splits: Any,
    sites: str | Sequence[str] | Sequence[Site] = "all",
    readout: str = "seqpool",
    silencing: str = "pre_pool",
    readout_epochs: int = 10,
    batch_size: int = 128,
    chunk_size: int = 128,
    split: str = "test",
    seed: int = 0,
    device: str | torch.device | None = None,
    progress: bool = True,
    readout_options: Mapping[str, Any] | None = None,
    attrs: Mapping[str, Any] | None = None,
    return_readouts: bool = False,
) -> xr.Dataset | tuple[xr.Dataset, dict[str, Readout]]:
    """Train readouts on ``splits.train`` and return the SNP Dataset on ``splits.<split>``.

    ``splits`` has ``.train``, ``.val``, ``.test`` (datasets of ``(image, label)``), ``.classes``
    and ``.num_classes``. ``readout_options`` overrides :class:`ReadoutConfig` fields (lr,
    momentum, weight_decay, ...); ``attrs`` adds/overrides Dataset attrs (model, dataset,
    checkpoint, ...). The model is moved to ``device`` and left in its original train/eval mode.
    With ``return_readouts`` returns ``(dataset, {site name: trained readout})``.
    """
    check_options(readout, silencing, split)
    evaluated = getattr(splits, split, None)
    if evaluated is None:
        raise UnknownNameError(f"the data have no {split!r} split")
    site_list = resolve(model, sites)
    config = ReadoutConfig(
        readout=readout,
        epochs=readout_epochs,
        batch_size=batch_size,
        seed=seed,
        **dict(readout_options or {}),
    )
    num_labels = int(splits.num_classes)
    trained = train_readouts(model, site_list, splits.train, num_labels, config, device, progress)
    results = matrices(
        model, trained, evaluated, num_labels, silencing, batch_size, chunk_size, device, progress
    )
    ds = build_dataset(
        results,
        list(splits.classes),
        readout=readout,
        silencing=silencing,
        split=split,
        readout_config=config.to_json(),
        attrs=attrs,
    )
    return (ds, trained) if return_readouts else ds


def binarize(ds: xr.Dataset | xr.DataArray, theta: float = 0.3) -> xr.Dataset | xr.DataArray:
    """Boolean matrices ``M / max(M) > theta`` (strict, in the matrices' float dtype).

    A Dataset gives a Dataset of its ``snp_*`` / ``head_snp_*`` variables (with coords, the
    Dataset's attrs and ``theta``). A DataArray gives a DataArray named ``{name}_binary`` with
    ``attrs = {"theta": theta}``. NaN padding binarises to False. ``theta`` outside (0, 1) raises
    :class:`~statmech_nn.errors.ThresholdError`.
    """
    t = check_theta(theta)
    if isinstance(ds, xr.DataArray):
        out = exceeds(ds, t)
        out.attrs = {"theta": t}
        return out.rename(f"{ds.name}_binary" if ds.name else None)
    names = [v for v in ds.data_vars if str(v).startswith(MATRIX_PREFIXES)]
    return xr.Dataset({v: exceeds(ds[v], t) for v in names}, attrs={**ds.attrs, "theta": t})
