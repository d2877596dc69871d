"""Stored form of the SNP tensors: netCDF files and trained-readout files.

The file edge of :mod:`statmech_nn.snp`: :func:`save` / :func:`load` / :func:`validate` the netCDF
of the SNP Dataset (docs/methods.md section 9, docs/architecture.md) and :func:`save_readouts` /
:func:`read_readouts` the trained readouts. Writes are atomic (:mod:`statmech_nn.fileio`). The
MLflow runs that log these files are in :mod:`statmech_nn.snp.runs`.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr

from statmech_nn.errors import SchemaError
from statmech_nn.fileio import atomic_path, atomic_write, atomic_write_text
from statmech_nn.readout import Readout, make_readout, resolve_device
from statmech_nn.sites import Site
from statmech_nn.snp.dataset import SCHEMA

__all__ = [
    "READOUTS_FILE",
    "READOUTS_META",
    "READOUTS_SCHEMA",
    "describe",
    "load",
    "matrix_chunks",
    "read_readouts",
    "save",
    "save_readouts",
    "validate",
]

READOUTS_FILE = "readouts.pt"
READOUTS_META = "readouts.json"
READOUTS_SCHEMA = "statmech-nn.readouts/1"


CHUNK_BYTES = 16 * 2**20
"""Largest stored chunk of a matrix variable: one layer's matrices, or an even node block."""

COMPRESS_MIN_BYTES = 64 * 2**10
"""Non-matrix variables smaller than this are stored contiguous, without compression."""
_MATRIX_DIMS = ("label_true", "label_out")
_FLOAT32 = ("snp_", "head_snp_", "scale_")
_NAMES = {
    "snp_": ("single-node matrix M / max(M) of the {kind} nodes", "1"),
    "head_snp_": ("single-head matrix M / max(M) of the {kind} heads", "1"),
    "scale_": ("signed maximum max(M) of each {kind} node's raw matrix", "1"),
    "acc_": ("readout test accuracy on the {kind} site", "1"),
    "node_count_": ("nodes of the {kind} site", "nodes"),
}
_COORD_NAMES = {
    "layer": "layer (block or convolution index)",
    "node": "node (channel)",
    "head": "attention head of the channel",
    "label_true": "true label",
    "label_out": "output label",
    "label_name_true": "name of the true label",
    "label_name_out": "name of the output label",
    "count_label": "test samples per true label",
}


def _description(name: str) -> tuple[str, str | None] | None:
    """The ``long_name`` (and ``units``) of variable or coordinate ``name``; None if unknown."""
    for prefix in sorted(_NAMES, key=len, reverse=True):
        if name.startswith(prefix):
            text, units = _NAMES[prefix]
            return text.format(kind=name[len(prefix) :]), units
    base = name.split("_")[0] if name.startswith(("node_", "head_")) else name
    if name == "count_label":
        return _COORD_NAMES[name], "samples"
    if base in _COORD_NAMES:
        return _COORD_NAMES[base] + (f" ({name[len(base) + 1 :]})" if base != name else ""), None
    return None


def describe(ds: xr.Dataset) -> xr.Dataset:
    """A shallow copy of ``ds`` whose variables and coords carry ``long_name`` (and ``units``).

    Names already set are kept; ``.plot()`` uses them to label its axes.
    """
    out = ds.copy(deep=False)
    for name in [*out.coords, *out.data_vars]:
        found = _description(str(name))
        if found is None:
            continue
        attrs = dict(out[name].attrs)
        attrs.setdefault("long_name", found[0])
        if found[1] is not None:
            attrs.setdefault("units", found[1])
        out[name].attrs = attrs
    return out


def matrix_chunks(shape: Sequence[int], itemsize: int = 4) -> tuple[int, ...]:
    """Chunks of a ``(layer, node, label, label)`` variable: one layer's whole matrices.

    Above :data:`CHUNK_BYTES` per layer, the nodes are cut into equal blocks that fit.
    """
    layers, nodes, rows, cols = shape
    fitting = max(CHUNK_BYTES // max(rows * cols * itemsize, 1), 1)  # nodes per chunk at most
    blocks = max(math.ceil(nodes / fitting), 1)
    return (min(layers, 1), max(math.ceil(nodes / blocks), 1), rows, cols)


def _stored_bytes(name: str, var: xr.DataArray) -> int:
    return var.size * (4 if name.startswith(_FLOAT32) else var.dtype.itemsize)


def _encoding(ds: xr.Dataset) -> dict[str, dict[str, Any]]:
    """netCDF encoding: matrices and scales float32; zlib 4 with shuffle on matrices by layer.

    Matrix variables are chunked by layer (:func:`matrix_chunks`) and compressed; other
    variables only from :data:`COMPRESS_MIN_BYTES` on, as each chunked variable costs HDF5 a few
    KB of chunk index, more than zlib saves on a small one.
    """
    enc: dict[str, dict[str, Any]] = {}
    for key, var in ds.data_vars.items():
        name = str(key)
        entry: dict[str, Any] = {"dtype": "float32"} if name.startswith(_FLOAT32) else {}
        matrix = var.ndim == 4 and var.dims[2:] == _MATRIX_DIMS
        large = var.dtype.kind in "fiu" and _stored_bytes(name, var) >= COMPRESS_MIN_BYTES
        if var.size and (matrix or large):
            entry.update(zlib=True, complevel=4, shuffle=True)
            entry["chunksizes"] = matrix_chunks(var.shape) if matrix else tuple(var.shape)
        if entry:
            enc[name] = entry
    return enc


def save(ds: xr.Dataset, path: str | os.PathLike) -> Path:
    """Write ``ds`` as netCDF (h5netcdf, float32, zlib + shuffle) atomically: temp, then rename.

    Each variable carries a ``long_name`` (:func:`describe`); matrices are stored in chunks of
    one layer's matrices (:func:`matrix_chunks`), the unit every analysis reads.
    """
    validate(ds)
    described = describe(ds)
    with atomic_path(path) as tmp:
        described.to_netcdf(tmp, engine="h5netcdf", encoding=_encoding(described))
    return Path(path)


_LIST_ATTRS = ("sites", "kinds")


def validate(ds: xr.Dataset) -> None:
    """Raise :class:`SchemaError` unless ``ds`` is an SNP Dataset of this schema."""
    if ds.attrs.get("schema") != SCHEMA:
        raise SchemaError(
            f"not an SNP tensor: attr schema={ds.attrs.get('schema')!r}, expected {SCHEMA!r} "
            "(write it with statmech_nn.snp.save)"
        )
    kinds = [str(v)[4:] for v in ds.data_vars if str(v).startswith("snp_")]
    if not kinds:
        raise SchemaError("SNP tensor without any snp_{kind} variable")
    for kind in kinds:
        dims = ds[f"snp_{kind}"].dims
        if (
            len(dims) != 4
            or dims[0] != "layer"
            or dims[2:] != ("label_true", "label_out")
            or not (str(dims[1]).startswith("node"))
        ):
            raise SchemaError(
                f"snp_{kind} has dims {dims}, expected (layer, node, label_true, label_out)"
            )
        for prefix in ("scale_", "acc_"):
            if f"{prefix}{kind}" not in ds:
                raise SchemaError(f"SNP tensor lacks the variable {prefix}{kind}")
    if "count_label" not in ds:
        raise SchemaError("SNP tensor lacks the variable count_label")
    for attr in ("readout", "silencing", "split"):
        if attr not in ds.attrs:
            raise SchemaError(f"SNP tensor lacks the attr {attr!r}")


def load(path: str | os.PathLike, *, lazy: bool = True) -> xr.Dataset:
    """Open an SNP netCDF (h5netcdf) and validate it (:class:`SchemaError`).

    ``lazy`` (default): the file stays open and values are read when used, so a large tensor
    costs only what is looked at; close it with ``ds.close()`` or ``with snp.load(p) as ds``.
    ``lazy=False`` reads everything into memory and closes the file (for a file about to go).
    """
    target = Path(path)
    if not target.exists():
        raise FileNotFoundError(f"no SNP tensor at {target}")
    try:
        ds = xr.open_dataset(target, engine="h5netcdf")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SchemaError(f"{target} is not a readable netCDF file ({exc})") from exc
    try:
        _fix_list_attrs(ds)
        validate(ds)
        if not lazy:
            ds.load()
    except BaseException:
        ds.close()
        raise
    if not lazy:
        ds.close()
    return ds


def _fix_list_attrs(ds: xr.Dataset) -> None:
    """The ``sites`` / ``kinds`` attrs as lists of str (netCDF stores a single one as a str)."""
    for attr in _LIST_ATTRS:
        value = ds.attrs.get(attr)
        if isinstance(value, str):
            ds.attrs[attr] = [value]
        elif value is not None:
            ds.attrs[attr] = [str(v) for v in np.atleast_1d(value)]


def save_readouts(readouts: Mapping[str, Readout], folder: str | os.PathLike) -> list[Path]:
    """Write trained readouts as ``readouts.pt`` and ``readouts.json`` in ``folder``.

    ``readouts.pt`` is ``{site name: state dict}`` of CPU tensors (load it with
    ``torch.load(weights_only=True)``); ``readouts.json`` records, per site, the readout kind,
    site kind and layer, ``tokens``/``nodes``/``labels`` and each tensor's shape, so the readouts
    can be rebuilt without retraining (:func:`read_readouts`). Returns both paths.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    states: dict[str, dict[str, torch.Tensor]] = {}
    meta: dict[str, Any] = {"schema": READOUTS_SCHEMA, "sites": {}}
    for name, r in readouts.items():
        state = {k: v.detach().cpu().clone() for k, v in r.state_dict().items()}
        states[name] = state
        meta["sites"][name] = {
            "readout": r.kind,
            "kind": r.site.kind if r.site is not None else "",
            "layer": r.site.layer if r.site is not None else -1,
            "tokens": r.tokens,
            "nodes": r.nodes,
            "labels": r.labels,
            "shapes": {k: list(v.shape) for k, v in state.items()},
        }
    weights = atomic_write(folder / READOUTS_FILE, lambda fh: torch.save(states, fh))
    info = atomic_write_text(folder / READOUTS_META, json.dumps(meta, indent=2, sort_keys=True))
    return [weights, info]


def read_readouts(
    folder: str | os.PathLike, sites: Sequence[Site], device: str | torch.device | None = None
) -> dict[str, Readout]:
    """Rebuild the readouts of ``sites`` from :func:`save_readouts` files in ``folder``.

    Raises :class:`SchemaError` when a site is missing or its shapes differ from the stored ones.
    """
    folder = Path(folder)
    meta = json.loads((folder / READOUTS_META).read_text(encoding="utf-8"))
    if meta.get("schema") != READOUTS_SCHEMA:
        raise SchemaError(f"{folder / READOUTS_META}: schema {meta.get('schema')!r}")
    states = torch.load(folder / READOUTS_FILE, map_location="cpu", weights_only=True)
    out: dict[str, Readout] = {}
    for site in sites:
        info = meta["sites"].get(site.name)
        if info is None or site.name not in states:
            raise SchemaError(f"stored readouts have no site {site.name!r}: {sorted(states)}")
        r = make_readout(info["readout"], info["tokens"], info["nodes"], info["labels"], site)
        try:
            r.load_state_dict(states[site.name])
        except RuntimeError as exc:
            raise SchemaError(f"stored readout of {site.name} does not fit: {exc}") from exc
        r.to(resolve_device(device)).eval().requires_grad_(False)
        out[site.name] = r
    return out
