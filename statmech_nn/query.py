"""Order parameters across MLflow runs as one ``xarray.Dataset`` with dims ``(run, layer)``.

Metric names follow docs/architecture.md: ``{family}.{fields...}.{block|conv|layer}{i}`` becomes
the variable ``{family}_{fields...}`` (dots as underscores) at layer ``i``, e.g.
``order.Q.block5`` -> ``order_Q`` at ``layer=5``, ``snr.ff.block3`` -> ``snr_ff`` at ``layer=3``.
Metrics without a layer suffix (``andc.accuracy``) become ``(run,)`` variables; when a run also
has per-layer values of that name (a study trial's ``andc.accuracy.block0``), those become
``andc_accuracy_by_layer``. Values are the runs' latest ones (highest step). Run attributes and
every param are coordinates on ``run`` (``run_name``, ``experiment_id``, ``parent_run_id``,
``run_kind``, ``status``, ``param_{name}``); a param whose values are all numbers is a number
coordinate (NaN where a run lacks it or logged ``None``), all ``True``/``False`` a boolean one,
anything else strings (NaN where missing). Study trials (one run per Optuna trial) are left
out unless ``trials=True``.

Example: which runs have ``Q > 0.5`` in their last block? ::

    ds = order_parameters()
    ds.run[last_layer(ds.order_Q) > 0.5].values
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import xarray as xr

from statmech_nn.errors import TrackingError
from statmech_nn.naming import KIND_TAG, KIND_TRIAL, LAYERED_METRIC

_UNSAFE = re.compile(r"[^0-9A-Za-z_]")
BY_LAYER = "_by_layer"
"""Suffix of per-layer values whose name a scalar metric of the same runs already has."""
_MISSING = ("", "None", "none", "null")


def variable_name(metric: str) -> tuple[str, int | None]:
    """``("order_Q", 5)`` for ``order.Q.block5``; ``("andc_accuracy", None)`` for a scalar."""
    match = LAYERED_METRIC.match(metric)
    if match:
        return _UNSAFE.sub("_", match.group("family")), int(match.group("index"))
    return _UNSAFE.sub("_", metric), None


def _experiments(experiment: str | None) -> list[str] | None:
    from mlflow.tracking import MlflowClient

    if experiment is None:
        return None
    client = MlflowClient()
    found = client.get_experiment_by_name(experiment)
    if found is None:
        try:
            found = client.get_experiment(experiment)
        except Exception:  # noqa: BLE001 - not an id either
            found = None
    if found is None:
        names = [e.name for e in client.search_experiments()]
        raise TrackingError(f"no MLflow experiment {experiment!r}; experiments: {names}")
    return [found.experiment_id]


def from_runs(runs: Sequence[Any]) -> xr.Dataset:
    """The ``(run, layer)`` Dataset of a list of MLflow ``Run`` objects."""
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

    layered: dict[str, dict[tuple[int, int], float]] = {}
    scalars: dict[str, dict[int, float]] = {}
    layers: set[int] = set()
    for r, run in enumerate(runs):
        for metric, value in run.data.metrics.items():
            name, layer = variable_name(metric)
            if layer is None:
                scalars.setdefault(name, {})[r] = float(value)
            else:
                layered.setdefault(name, {})[(r, layer)] = float(value)
                layers.add(layer)
    layer_values = sorted(layers)
    index = {layer: i for i, layer in enumerate(layer_values)}
    data: dict[str, Any] = {}
    for name, by_run in scalars.items():
        column = np.full(len(runs), np.nan)
        for r, value in by_run.items():
            column[r] = value
        data[name] = (("run",), column)
    for name, values in layered.items():
        arr = np.full((len(runs), len(layer_values)), np.nan)
        for (r, layer), value in values.items():
            arr[r, index[layer]] = value
        data[name + BY_LAYER if name in scalars else name] = (("run", "layer"), arr)
    params = sorted({k for run in runs for k in run.data.params})
    coords: dict[str, Any] = {
        "run": [run.info.run_id for run in runs],
        "layer": np.asarray(layer_values, dtype=np.int64),
        "run_name": ("run", [str(run.info.run_name or "") for run in runs]),
        "experiment_id": ("run", [str(run.info.experiment_id) for run in runs]),
        "parent_run_id": (
            "run",
            [str(run.data.tags.get(MLFLOW_PARENT_RUN_ID, "")) for run in runs],
        ),
        "run_kind": ("run", [str(run.data.tags.get(KIND_TAG, "")) for run in runs]),
        "status": ("run", [str(run.info.status) for run in runs]),
        "start_time": ("run", np.asarray([run.info.start_time or 0 for run in runs], np.int64)),
    }
    for key in params:
        logged = [run.data.params.get(key) for run in runs]
        coords[f"param_{_UNSAFE.sub('_', key)}"] = ("run", typed_column(logged))
    return xr.Dataset(data, coords=coords)


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def typed_column(values: Sequence[str | None]) -> np.ndarray:
    """MLflow's string params as one typed column: int, float (NaN missing), bool or strings.

    Integers stay ``int64`` only when no run lacks the value; a missing or ``None`` value makes
    the column float with NaN. Strings have NaN where missing (or logged as ``None``), as in
    pandas.
    """
    present = [v for v in values if v is not None and v not in _MISSING]
    complete = len(present) == len(values)
    if present and all(v in ("True", "False") for v in present) and complete:
        return np.asarray([v == "True" for v in values], dtype=bool)
    numbers = [_number(v) for v in present]
    if present and all(n is not None for n in numbers):
        if complete and all(re.fullmatch(r"[-+]?\d+", v) for v in present):
            return np.asarray([int(v) for v in present], dtype=np.int64)
        return np.asarray(
            [np.nan if v is None or v in _MISSING else float(v) for v in values], dtype=np.float64
        )
    return np.asarray([np.nan if v in (None, "None") else v for v in values], dtype=object)


def order_parameters(
    experiment: str | None = None,
    filter_string: str = "",
    tracking_uri: str | None = None,
    trials: bool = False,
) -> xr.Dataset:
    """Metrics of every matching run (all experiments when ``experiment`` is None) by layer.

    ``filter_string`` is MLflow search syntax, e.g. ``"tags.`statmech_nn.kind` = 'order'"`` or
    ``"params.theta = '0.3'"``. Runs come newest first: training and analysis runs, and the
    study trials' runs too with ``trials``.
    """
    import mlflow

    from statmech_nn import tracking

    tracking.init_store(tracking_uri)
    ids = _experiments(experiment)
    try:
        runs = mlflow.search_runs(
            experiment_ids=ids,
            filter_string=filter_string or "",
            search_all_experiments=ids is None,
            order_by=["attributes.start_time DESC"],
            output_format="list",
        )
    except Exception as exc:
        if type(exc).__name__ == "MlflowException":
            raise TrackingError(f"MLflow search failed: {exc}") from exc
        raise
    if not trials:
        runs = [run for run in runs if run.data.tags.get(KIND_TAG) != KIND_TRIAL]
    return from_runs(runs)


def last_layer(da: xr.DataArray) -> xr.DataArray:
    """Per run, the value at its deepest layer with a value (runs differ in depth)."""
    da = da.transpose("run", "layer")
    values = da.values.astype(float)
    has = ~np.isnan(values)
    last = values.shape[1] - 1 - np.argmax(has[:, ::-1], axis=1) if values.shape[1] else None
    out = np.full(values.shape[0], np.nan)
    if last is not None:
        rows = np.flatnonzero(has.any(axis=1))
        out[rows] = values[rows, last[rows]]
    return xr.DataArray(out, dims=("run",), coords={"run": da["run"]}, name=da.name)


def to_table(ds: xr.Dataset, digits: int = 4) -> str:
    """A plain-text table: one row per (run, variable), one column per layer (or ``value``)."""
    layer_vars = [v for v in ds.data_vars if "layer" in ds[v].dims]
    scalar_vars = [v for v in ds.data_vars if "layer" not in ds[v].dims]
    header = ["run", "name", "variable"] + [str(int(x)) for x in ds["layer"].values] + ["value"]
    rows = [header]

    def fmt(x: float) -> str:
        return "" if np.isnan(x) else f"{x:.{digits}g}"

    for i, run in enumerate(ds["run"].values):
        name = str(ds["run_name"].values[i]) if "run_name" in ds.coords else ""
        for var in layer_vars:
            values = ds[var].values[i]
            if np.isnan(values).all():
                continue
            rows.append([str(run)[:8], name, str(var)] + [fmt(v) for v in values] + [""])
        for var in scalar_vars:
            value = float(ds[var].values[i])
            if not np.isnan(value):
                rows.append(
                    [str(run)[:8], name, str(var)] + [""] * ds.sizes["layer"] + [fmt(value)]
                )
    if len(rows) == 1:
        return "no metrics"
    widths = [max(len(r[c]) for r in rows) for c in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)) for r in rows
    )


def write_csv(ds: xr.Dataset, path: str) -> None:
    """Long format: one row per (run, layer), a column per variable and run coordinate."""
    ds.to_dataframe().to_csv(path)


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value))


def write_netcdf(ds: xr.Dataset, path: str) -> None:
    """netCDF (h5netcdf) with string coordinates stored as fixed-width unicode ("" missing)."""
    out = ds.copy()
    for name, coord in out.coords.items():
        if coord.dtype == object:
            text = ["" if _missing(v) else str(v) for v in coord.values]
            out = out.assign_coords({name: (coord.dims, np.asarray(text, dtype=str))})
    out.to_netcdf(path, engine="h5netcdf")
