"""Reading the SNP dataset for the order parameters: kinds, node dims, real nodes.

Binarisation is :func:`statmech_nn.snp.binarize` (the one strict threshold comparison).
"""

from __future__ import annotations

import xarray as xr

from statmech_nn.errors import SchemaError

MATRIX_DIMS = ("label_true", "label_out")


def kinds(ds: xr.Dataset) -> list[str]:
    """Site kinds with node matrices in ``ds`` (variables ``snp_{kind}``), in dataset order."""
    found = [str(name)[4:] for name in ds.data_vars if str(name).startswith("snp_")]
    if not found:
        raise SchemaError(
            "dataset holds no snp_{kind} variables; is it an SNP dataset written by "
            "`statmech-nn snp`?"
        )
    return found


def head_kinds(ds: xr.Dataset) -> list[str]:
    """Kinds whose nodes belong to heads: those with ``head_snp_{kind}`` or heads in site specs.

    The ``head`` coordinate sits on a node dim that other kinds of the same width share, so its
    presence alone does not say that a kind has heads.
    """
    import json

    found = [k for k in kinds(ds) if f"head_snp_{k}" in ds]
    try:
        specs = json.loads(ds.attrs.get("site_specs") or "[]")
    except (TypeError, ValueError):
        specs = []
    for spec in specs:
        kind = str(spec.get("kind"))
        if spec.get("heads") and kind not in found and f"snp_{kind}" in ds:
            found.append(kind)
    return found


def node_dim(da: xr.DataArray) -> str:
    """The node dim (``node`` or ``node_*``) of a ``(layer, node*, label_true, label_out)`` var."""
    others = [d for d in da.dims if d not in ("layer", *MATRIX_DIMS)]
    if len(others) != 1 or not str(others[0]).startswith("node"):
        raise SchemaError(
            f"{da.name}: expected dims (layer, node, label_true, label_out), got {da.dims}"
        )
    return str(others[0])


def node_matrices(ds: xr.Dataset, kind: str) -> xr.DataArray:
    """``snp_{kind}`` as ``(layer, node, label_true, label_out)`` with the node dim named ``node``.

    Coordinates on the node dim (e.g. ``head``) are kept. Raises :class:`SchemaError` for a
    missing kind or non-square matrices.
    """
    name = f"snp_{kind}"
    if name not in ds:
        raise SchemaError(f"dataset has no variable {name}; its kinds are {kinds(ds)}")
    da = ds[name]
    dim = node_dim(da)
    da = da.transpose("layer", dim, *MATRIX_DIMS)
    if dim != "node":
        da = da.drop_vars([c for c in da.coords if c == "node"]).rename({dim: "node"})
    if da.sizes["label_true"] != da.sizes["label_out"]:
        raise SchemaError(f"{name}: matrices are not square ({dict(da.sizes)})")
    return da


def valid_nodes(matrices: xr.DataArray) -> xr.DataArray:
    """``(layer, node)`` bool: real nodes, not NaN padding (VGG layers narrower than the widest)."""
    return ~matrices.isnull().all(list(MATRIX_DIMS))
