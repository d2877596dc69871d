"""Stored form of the SNP tensors: netCDF files, trained-readout files and MLflow ``snp`` runs.

The I/O edge of :mod:`statmech_nn.snp`, which holds the science (matrices, normalisation, the
Dataset); the names here are also re-exported there. METHODS.md section 9 and
docs/architecture.md give the netCDF schema and the ``snp`` child run's params, metrics and
artifacts.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
import xarray as xr

from statmech_nn.data.splits import subset
from statmech_nn.errors import SchemaError, TrackingError, UnknownNameError
from statmech_nn.readout import Readout, ReadoutConfig, make_readout, resolve_device
from statmech_nn.sites import Site, resolve
from statmech_nn.snp import SCHEMA, check_options, compute

__all__ = [
    "ARTIFACT_PATH",
    "KIND_TAG",
    "READOUTS_FILE",
    "READOUTS_META",
    "READOUTS_SCHEMA",
    "compute_for_run",
    "find_snp_run",
    "load",
    "load_from_run",
    "load_readouts",
    "read_readouts",
    "save",
    "save_readouts",
    "validate",
]

ARTIFACT_PATH = "snp/snp.nc"
READOUTS_FILE = "readouts.pt"
READOUTS_META = "readouts.json"
READOUTS_SCHEMA = "statmech-nn.readouts/1"
KIND_TAG = "statmech_nn.kind"


def _encoding(ds: xr.Dataset) -> dict[str, dict[str, Any]]:
    enc = {}
    for name, var in ds.data_vars.items():
        if var.dtype.kind == "f":
            enc[str(name)] = {"zlib": True, "complevel": 4}
            if str(name).startswith(("snp_", "head_snp_", "scale_")):
                enc[str(name)]["dtype"] = "float32"
    return enc


def save(ds: xr.Dataset, path: str | os.PathLike) -> Path:
    """Write ``ds`` as netCDF (h5netcdf, float32, zlib) atomically: temp file, then rename."""
    validate(ds)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        ds.to_netcdf(tmp, engine="h5netcdf", encoding=_encoding(ds))
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


_LIST_ATTRS = ("sites", "kinds")


def validate(ds: xr.Dataset) -> None:
    """Raise :class:`SchemaError` unless ``ds`` is an SNP Dataset of this schema."""
    if ds.attrs.get("schema") != SCHEMA:
        raise SchemaError(
            f"not an SNP tensor: attr schema={ds.attrs.get('schema')!r}, expected {SCHEMA!r} "
            "(write it with statmech_nn.snp.save)"
        )
    kinds = [v[4:] for v in ds.data_vars if str(v).startswith("snp_")]
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


def find_snp_run(client: Any, run: Any) -> Any:
    """``run`` itself if it is an SNP run, else its newest finished SNP child run.

    Raises :class:`TrackingError` when ``run`` has no finished SNP child.
    """
    if run.data.tags.get(KIND_TAG) == "snp":
        return run
    run_id = run.info.run_id
    children = client.search_runs(
        [run.info.experiment_id],
        filter_string=(
            f"tags.mlflow.parentRunId = '{run_id}' and tags.`{KIND_TAG}` = 'snp' "
            "and attributes.status = 'FINISHED'"
        ),
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not children:
        raise TrackingError(
            f"run {run_id} is not an SNP run and has no finished SNP child run: "
            f"run `statmech-nn snp {run_id}` first"
        )
    return children[0]


def load_from_run(run_id: str, tracking_uri: str | None = None) -> xr.Dataset:
    """The SNP Dataset of an MLflow run: an SNP child run, or a training run's newest SNP child.

    Raises :class:`TrackingError` when the run does not exist or has no finished SNP child run.
    """
    import mlflow
    from mlflow.tracking import MlflowClient

    uri = _tracking_uri(tracking_uri)
    client = MlflowClient(tracking_uri=uri)
    try:
        run = client.get_run(run_id)
    except Exception as exc:  # mlflow raises MlflowException subclasses
        raise TrackingError(f"no MLflow run {run_id!r} in {uri} ({exc})") from exc
    snp_run = find_snp_run(client, run)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = mlflow.artifacts.download_artifacts(
                run_id=snp_run.info.run_id,
                artifact_path=ARTIFACT_PATH,
                dst_path=tmp,
                tracking_uri=uri,
            )
        except Exception as exc:
            raise TrackingError(
                f"run {snp_run.info.run_id} has no artifact {ARTIFACT_PATH} ({exc})"
            ) from exc
        return load(local)


def _tracking_uri(uri: str | None) -> str:
    """The tracking URI: explicit, else ``MLFLOW_TRACKING_URI``, else the toolkit's default."""
    from statmech_nn import tracking

    return tracking.resolve_uri(uri)


def compute_for_run(
    run_id: str,
    epoch: int | None = None,
    sites: str | Sequence[str] = "all",
    readout: str = "seqpool",
    silencing: str = "pre_pool",
    readout_epochs: int = 10,
    batch_size: int = 128,
    chunk_size: int = 128,
    split: str = "test",
    seed: int = 0,
    device: str | torch.device | None = None,
    progress: bool = True,
    tracking_uri: str | None = None,
    limit_train: int | None = None,
    limit_eval: int | None = None,
    readout_options: Mapping[str, Any] | None = None,
) -> tuple[str, xr.Dataset]:
    """SNP tensor of a training run's checkpoint, logged in an ``snp`` child run.

    Loads the checkpoint (``epoch`` or the last), rebuilds the run's data without augmentation,
    trains the readouts on the train split and computes the matrices on ``split``. The child run
    gets the tag ``statmech_nn.kind=snp``, every choice as a param, the metrics
    ``acc.readout.{kind}.{block_i|conv_i}``, the trained readouts (``snp/readouts.pt`` and
    ``snp/readouts.json``, see :func:`save_readouts`) and the artifact ``snp/snp.nc``, logged only
    once the tensor is complete (an interrupted run ends FAILED without an artifact). Returns
    ``(child_run_id, dataset)``.
    """
    import mlflow

    from statmech_nn import tracking
    from statmech_nn.data import data_for_config
    from statmech_nn.sites import layer_label

    check_options(readout, silencing, split)
    tracking.init_store(tracking_uri)
    ckpt = tracking.load_checkpoint(run_id, epoch)
    site_list = resolve(ckpt.model, sites)
    splits = data_for_config(ckpt.config, augment="none")
    evaluated = getattr(splits, split, None)
    if evaluated is None:
        raise UnknownNameError(f"the data of run {run_id} have no {split!r} split")
    limited = SimpleNamespace(
        train=subset(splits.train, limit_train, seed),
        val=splits.val,
        test=splits.test,
        classes=list(splits.classes),
        num_classes=splits.num_classes,
    )
    setattr(limited, split, subset(evaluated, limit_eval, seed))
    config = ReadoutConfig(
        readout=readout,
        epochs=readout_epochs,
        batch_size=batch_size,
        seed=seed,
        **dict(readout_options or {}),
    )
    with tracking.child_run(run_id, "snp") as active:
        child_id = active.info.run_id
        mlflow.set_tag(KIND_TAG, "snp")
        mlflow.log_params(
            {
                "sites": ",".join(s.name for s in site_list),
                "readout": readout,
                "silencing": silencing if readout == "seqpool" else "none",
                "split": split,
                "readout_epochs": readout_epochs,
                "readout_lr": config.lr,
                "readout_momentum": config.momentum,
                "readout_nesterov": config.nesterov,
                "readout_weight_decay": config.weight_decay,
                "readout_schedule": config.schedule,
                "batch_size": batch_size,
                "chunk_size": chunk_size,
                "seed": seed,
                "checkpoint_epoch": ckpt.epoch,
                "limit_train": limit_train,
                "limit_eval": limit_eval,
            }
        )
        attrs = {
            "model": str(ckpt.model_config.get("name", "")),
            "dataset": str(ckpt.config.get("dataset", "")),
            "checkpoint": ckpt.path,
            "checkpoint_epoch": int(ckpt.epoch),
            "mlflow_run_id": child_id,
            "training_run_id": run_id,
        }
        ds, trained = compute(
            ckpt.model,
            limited,
            site_list,
            readout,
            silencing,
            readout_epochs,
            batch_size,
            chunk_size,
            split,
            seed,
            device,
            progress,
            readout_options=readout_options,
            attrs=attrs,
            return_readouts=True,
        )
        metrics = {}
        for site in site_list:
            value = float(ds[f"acc_{site.kind}"].sel(layer=site.layer))
            metrics[f"acc.readout.{site.kind}.{layer_label(site)}"] = value
        mlflow.log_metrics(metrics)
        with tempfile.TemporaryDirectory() as tmp:
            path = save(ds, Path(tmp) / "snp.nc")
            folder = str(Path(ARTIFACT_PATH).parent)
            for written in save_readouts(trained, Path(tmp)):
                mlflow.log_artifact(str(written), artifact_path=folder)
            mlflow.log_artifact(str(path), artifact_path=folder)
    return child_id, ds


def save_readouts(readouts: Mapping[str, Readout], folder: str | os.PathLike) -> list[Path]:
    """Write trained readouts as ``readouts.pt`` and ``readouts.json`` in ``folder``.

    ``readouts.pt`` is ``{site name: state dict}`` of CPU tensors (load it with
    ``torch.load(weights_only=True)``); ``readouts.json`` records, per site, the readout kind,
    site kind and layer, ``tokens``/``nodes``/``labels`` and each tensor's shape, so the readouts
    can be rebuilt without retraining (:func:`load_readouts`). Returns both paths.
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
    weights = folder / READOUTS_FILE
    torch.save(states, weights)
    info = folder / READOUTS_META
    info.write_text(json.dumps(meta, indent=2, sort_keys=True), encoding="utf-8")
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


def load_readouts(
    snp_run_id: str,
    sites: Sequence[Site],
    tracking_uri: str | None = None,
    device: str | torch.device | None = None,
) -> dict[str, Readout] | None:
    """The trained readouts an SNP run logged (``snp/readouts.pt``), or None if it has none."""
    import mlflow
    from mlflow.tracking import MlflowClient

    uri = _tracking_uri(tracking_uri)
    folder = str(Path(ARTIFACT_PATH).parent)
    names = {Path(f.path).name for f in MlflowClient(uri).list_artifacts(snp_run_id, folder)}
    if not {READOUTS_FILE, READOUTS_META} <= names:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp)
        for name in (READOUTS_FILE, READOUTS_META):
            got = mlflow.artifacts.download_artifacts(
                run_id=snp_run_id,
                artifact_path=f"{folder}/{name}",
                dst_path=str(local / name.replace(".", "_")),
                tracking_uri=uri,
            )
            os.replace(got, local / name)
        return read_readouts(local, sites, device)
