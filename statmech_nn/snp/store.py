"""Stored form of the SNP tensors: netCDF files and trained-readout files.

The file edge of :mod:`statmech_nn.snp`: :func:`save` / :func:`load` / :func:`validate` the netCDF
of the SNP Dataset (METHODS.md section 9, docs/architecture.md) and :func:`save_readouts` /
:func:`read_readouts` the trained readouts. Writes are atomic (:mod:`statmech_nn.fileio`). The
MLflow runs that log these files are in :mod:`statmech_nn.snp.runs`.
"""

from __future__ import annotations

import json
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
    "load",
    "read_readouts",
    "save",
    "save_readouts",
    "validate",
]

READOUTS_FILE = "readouts.pt"
READOUTS_META = "readouts.json"
READOUTS_SCHEMA = "statmech-nn.readouts/1"


def _encoding(ds: xr.Dataset) -> dict[str, dict[str, Any]]:
    """netCDF encoding: zlib level 4 for float variables, matrices and scales as float32."""
    enc: dict[str, dict[str, Any]] = {}
    for name, var in ds.data_vars.items():
        if var.dtype.kind == "f":
            enc[str(name)] = {"zlib": True, "complevel": 4}
            if str(name).startswith(("snp_", "head_snp_", "scale_")):
                enc[str(name)]["dtype"] = "float32"
    return enc


def save(ds: xr.Dataset, path: str | os.PathLike) -> Path:
    """Write ``ds`` as netCDF (h5netcdf, float32, zlib) atomically: temp file, then rename."""
    validate(ds)
    with atomic_path(path) as tmp:
        ds.to_netcdf(tmp, engine="h5netcdf", encoding=_encoding(ds))
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


def load(path: str | os.PathLike) -> xr.Dataset:
    """Read an SNP netCDF (h5netcdf) fully into memory and validate it (:class:`SchemaError`)."""
    target = Path(path)
    if not target.exists():
        raise FileNotFoundError(f"no SNP tensor at {target}")
    try:
        with xr.open_dataset(target, engine="h5netcdf") as opened:
            ds = opened.load()
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SchemaError(f"{target} is not a readable netCDF file ({exc})") from exc
    for attr in _LIST_ATTRS:
        value = ds.attrs.get(attr)
        if isinstance(value, str):
            ds.attrs[attr] = [value]
        elif value is not None:
            ds.attrs[attr] = [str(v) for v in np.atleast_1d(value)]
    validate(ds)
    return ds


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
