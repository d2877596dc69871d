"""The cooperation result as xarray and its MLflow metric names (docs/methods.md section 11).

One ``xr.Dataset`` per site kind, with dims ``layer``, ``size``, ``draw``, ``member``, ``node``
and ``label`` (never one name twice):

- subset curve (``statmech_nn.cooperation.subset_curve``): ``accuracy (layer, size, draw)``,
  ``recognised`` / ``union (layer, size, draw, label)``, their counts ``recognised_labels`` /
  ``union_labels``, ``cooperation`` (their difference), ``new_labels`` (recognised, in no
  member's ``D_n``), ``nodes (layer, size, draw, member)`` (-1 past the subset's size);
- single-node bound (:func:`bound_dataset`): ``can_output (layer, node, label)``,
  ``output_labels (layer, node)`` (labels the node can ever output) and ``diagonal_labels
  (layer, node)`` (``|D_n|``).

attrs: ``kind``, ``chance`` (``1 / L``), ``theta``, ``domain`` and the subset options. Metric names
(:func:`metrics`), dots with the layer label last: ``coop.chance``, ``coop.acc.{kind}.n{n}.{layer}``
(and ``coop.acc_std``, ``coop.labels``, ``coop.union``, ``coop.gain``, ``coop.new``),
``bound.labels.{kind}.{layer}`` (mean over nodes), ``bound.max.{kind}.{layer}``,
``bound.diag.{kind}.{layer}`` (mean ``|D_n|``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from os import PathLike

import numpy as np
import xarray as xr

from statmech_nn.cooperation_bound import output_labels
from statmech_nn.fileio import atomic_path
from statmech_nn.naming import layer_label


def bound_dataset(
    weight: np.ndarray,
    single_labels: np.ndarray,
    bias: np.ndarray | None = None,
    domain: str = "real",
) -> xr.Dataset:
    """Per node the labels it can ever output beside its ``D_n``: dims ``(node, label)``.

    ``weight`` is the site readout's ``W[j, n]`` or ``W[j, n, t]``; ``single_labels`` the bool
    ``[N, L]`` ``D_n`` of the same readout.
    """
    can = output_labels(weight, bias, domain)
    single = np.asarray(single_labels, dtype=bool)
    if single.shape != can.shape:
        raise ValueError(f"single_labels {single.shape} do not match the weights' {can.shape}")
    return xr.Dataset(
        {
            "can_output": (("node", "label"), can),
            "output_labels": ("node", can.sum(1)),
            "diagonal_labels": ("node", single.sum(1)),
        },
        coords={"node": np.arange(can.shape[0]), "label": np.arange(can.shape[1])},
        attrs={"domain": domain},
    )


def site_result(curve: xr.Dataset, bound: xr.Dataset) -> xr.Dataset:
    """The subset curve and the bound of one site in one dataset."""
    return xr.merge([curve, bound], combine_attrs="no_conflicts")


def stack_layers(
    per_layer: Mapping[int, xr.Dataset], kind: str, label_names: list[str] | None = None
) -> xr.Dataset:
    """Site results of one kind stacked along ``layer`` (same sizes, draws and nodes each)."""
    layers = sorted(per_layer)
    ds = xr.concat([per_layer[k] for k in layers], dim="layer", combine_attrs="drop_conflicts")
    ds = ds.assign_coords(layer=layers)
    if label_names is not None:
        ds = ds.assign_coords(label_name=("label", list(label_names)))
    ds.attrs["kind"] = kind
    return ds


CURVE_METRIC = re.compile(
    r"^coop\.(?P<stat>acc|acc_std|labels|union|gain|new)\.(?P<kind>.+)\.n(?P<n>\d+)$"
)
"""The family of a subset-curve metric ``coop.{stat}.{kind}.n{size}.{layer}`` (the layer split
off by :data:`~statmech_nn.naming.LAYERED_METRIC`)."""
BOUND_METRIC = re.compile(r"^bound\.(?P<stat>labels|max|diag)\.(?P<kind>.+)$")
"""The family of a single-node bound metric ``bound.{stat}.{kind}.{layer}``."""
CHANCE_METRIC = "coop.chance"


def metrics(ds: xr.Dataset) -> dict[str, float]:
    """MLflow metrics of a stacked result (names in the module docstring)."""
    kind = ds.attrs["kind"]
    out: dict[str, float] = {}
    if "chance" in ds.attrs:
        out[CHANCE_METRIC] = float(ds.attrs["chance"])
    for layer in ds["layer"].values.tolist():
        at = ds.sel(layer=layer)
        label = layer_label(kind, int(layer))
        if "accuracy" in ds:
            for size in ds["size"].values.tolist():
                row = at.sel(size=size)
                stem = f"{kind}.n{size}.{label}"
                out[f"coop.acc.{stem}"] = float(row["accuracy"].mean())
                out[f"coop.acc_std.{stem}"] = float(row["accuracy"].std())
                out[f"coop.labels.{stem}"] = float(row["recognised_labels"].mean())
                out[f"coop.union.{stem}"] = float(row["union_labels"].mean())
                out[f"coop.gain.{stem}"] = float(row["cooperation"].mean())
                out[f"coop.new.{stem}"] = float(row["new_labels"].mean())
        if "output_labels" in ds:
            out[f"bound.labels.{kind}.{label}"] = float(at["output_labels"].mean())
            out[f"bound.max.{kind}.{label}"] = float(at["output_labels"].max())
            out[f"bound.diag.{kind}.{label}"] = float(at["diagonal_labels"].mean())
    return out


def save(ds: xr.Dataset, path: str | PathLike) -> None:
    """Write ``ds`` as netCDF (h5netcdf) atomically."""
    with atomic_path(path) as tmp:
        ds.to_netcdf(tmp, engine="h5netcdf")


def load(path: str | PathLike) -> xr.Dataset:
    """Read a cooperation result written by :func:`save`."""
    with xr.open_dataset(path, engine="h5netcdf") as ds:
        return ds.load()
