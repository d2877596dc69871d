"""The SNP analysis as MLflow runs: compute a training run's tensor, find and load logged ones.

:func:`for_run` (also :func:`compute_for_run`) is the orchestration entry point of the SNP
analysis: checkpoint -> data -> readouts -> matrices -> an ``snp`` child run with the artifact
``snp/snp.nc``. :func:`find_snp_run` is the one lookup of "the SNP run of a run", used by
:func:`load_from_run` and the order command. docs/architecture.md lists the child run's params,
metrics and artifacts. MLflow is imported inside the functions, so importing
:mod:`statmech_nn.snp` stays free of it.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
import xarray as xr

from statmech_nn.data.mlm import MLM_OBJECTIVE
from statmech_nn.data.splits import Splits
from statmech_nn.errors import ConfigError, TrackingError, UnknownNameError
from statmech_nn.naming import KIND_SNP, KIND_TAG
from statmech_nn.readout import Readout, ReadoutConfig
from statmech_nn.sites import Site, layer_label, resolve
from statmech_nn.snp.dataset import compute
from statmech_nn.snp.engine import check_options
from statmech_nn.snp.store import (
    READOUTS_FILE,
    READOUTS_META,
    load,
    read_readouts,
    save,
    save_readouts,
)
from statmech_nn.snp.tokens import TOKEN_READOUT

__all__ = [
    "ARTIFACT_PATH",
    "SnpRun",
    "compute_for_run",
    "find_snp_run",
    "for_run",
    "load_from_run",
    "load_readouts",
]

ARTIFACT_PATH = "snp/snp.nc"
"""The SNP netCDF's artifact path in an ``snp`` child run (the readout files sit beside it)."""


@dataclass(frozen=True)
class SnpRun:
    """An SNP run and the training run it belongs to (None when it has no parent)."""

    snp_run_id: str
    training_run_id: str | None
    experiment_id: str


def _tracking_uri(uri: str | None) -> str:
    """The tracking URI: explicit, else ``MLFLOW_TRACKING_URI``, else the toolkit's default."""
    from statmech_nn import tracking

    return tracking.resolve_uri(uri)


def find_snp_run(run_id: str, tracking_uri: str | None = None) -> SnpRun:
    """``run_id`` itself if it is an SNP run, else the newest finished SNP child of ``run_id``.

    ``tracking_uri`` defaults to mlflow's current one (as set by ``tracking.init_store``).
    Raises :class:`TrackingError` for an unknown run or a run without a finished SNP child run.
    """
    import mlflow
    from mlflow.tracking import MlflowClient
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

    uri = tracking_uri or mlflow.get_tracking_uri()
    client = MlflowClient(tracking_uri=uri)
    try:
        run = client.get_run(run_id)
    except Exception as exc:  # mlflow raises MlflowException subclasses
        raise TrackingError(
            f"no MLflow run {run_id!r} in {uri}; check the run id, or pass the --tracking-uri "
            "of the store that holds it"
        ) from exc
    if run.data.tags.get(KIND_TAG) == KIND_SNP:
        return SnpRun(run_id, run.data.tags.get(MLFLOW_PARENT_RUN_ID), run.info.experiment_id)
    children = client.search_runs(
        [run.info.experiment_id],
        filter_string=(
            f"tags.{MLFLOW_PARENT_RUN_ID} = '{run_id}' and tags.`{KIND_TAG}` = '{KIND_SNP}' "
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
    return SnpRun(children[0].info.run_id, run_id, run.info.experiment_id)


def load_from_run(run_id: str, tracking_uri: str | None = None) -> xr.Dataset:
    """The SNP Dataset of an MLflow run: an SNP child run, or a training run's newest SNP child.

    Raises :class:`TrackingError` when the run does not exist or has no finished SNP child run.
    """
    import mlflow

    uri = _tracking_uri(tracking_uri)
    snp_run_id = find_snp_run(run_id, uri).snp_run_id
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = mlflow.artifacts.download_artifacts(
                run_id=snp_run_id, artifact_path=ARTIFACT_PATH, dst_path=tmp, tracking_uri=uri
            )
        except Exception as exc:
            missing = f"run {snp_run_id} has no artifact {ARTIFACT_PATH} ({exc})"
            raise TrackingError(missing) from exc
        return load(local, lazy=False)


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


# -- computing an SNP run ------------------------------------------------------------------------


def limited_splits(
    run_id: str,
    splits: Any,
    split: str,
    limit_train: int | None,
    limit_eval: int | None,
    seed: int,
) -> Splits:
    """Run ``run_id``'s ``splits`` with the train and the evaluated ``split`` cut to subsets."""
    evaluated = getattr(splits, split, None)
    if evaluated is None:
        raise UnknownNameError(f"the data of run {run_id} have no {split!r} split")
    limits = {"train": limit_train, split: limit_eval}
    return splits.limited(seed, **limits)


def refuse_mlm_run(run_id: str, config: Mapping[str, Any], readout: str) -> None:
    """A sample-label readout of a run pre-trained as a masked language model: ConfigError."""
    if config.get("objective") == MLM_OBJECTIVE:
        raise ConfigError(
            f"run {run_id} was pre-trained as a masked language model (objective mlm): it has "
            f"no labels for --readout {readout}; pass --readout token --tokens K"
        )


def run_params(
    site_list: Sequence[Site], config: ReadoutConfig, choices: Mapping[str, Any]
) -> dict[str, Any]:
    """The ``snp`` child run's params: the sites, the readout training and every choice."""
    readout = choices["readout"]
    return {
        "sites": ",".join(s.name for s in site_list),
        "readout": readout,
        "silencing": choices["silencing"] if readout == "seqpool" else "none",
        "split": choices["split"],
        "readout_epochs": choices["readout_epochs"],
        "readout_lr": config.lr,
        "readout_momentum": config.momentum,
        "readout_nesterov": config.nesterov,
        "readout_weight_decay": config.weight_decay,
        "readout_schedule": config.schedule,
        "batch_size": choices["batch_size"],
        "chunk_size": choices["chunk_size"],
        "seed": choices["seed"],
        "checkpoint_epoch": choices["checkpoint_epoch"],
        "limit_train": choices["limit_train"],
        "limit_eval": choices["limit_eval"],
    }


def provenance(ckpt: Any, child_id: str, run_id: str) -> dict[str, Any]:
    """Dataset attrs naming the model, data, checkpoint and runs the tensor comes from."""
    return {
        "model": str(ckpt.model_config.get("name", "")),
        "dataset": str(ckpt.config.get("dataset", "")),
        "checkpoint": ckpt.path,
        "checkpoint_epoch": int(ckpt.epoch),
        "mlflow_run_id": child_id,
        "training_run_id": run_id,
    }


def readout_metrics(ds: xr.Dataset, site_list: Sequence[Site]) -> dict[str, float]:
    """``acc.readout.{kind}.{layer label}``: each site's readout accuracy."""
    return {
        f"acc.readout.{site.kind}.{layer_label(site)}": float(
            ds[f"acc_{site.kind}"].sel(layer=site.layer)
        )
        for site in site_list
    }


def log_artifacts(ds: xr.Dataset, trained: Mapping[str, Readout]) -> None:
    """Log the readout files, then ``snp/snp.nc`` last (its presence means the run is complete)."""
    import mlflow

    with tempfile.TemporaryDirectory() as tmp:
        path = save(ds, Path(tmp) / "snp.nc")
        folder = str(Path(ARTIFACT_PATH).parent)
        for written in save_readouts(trained, Path(tmp)):
            mlflow.log_artifact(str(written), artifact_path=folder)
        mlflow.log_artifact(str(path), artifact_path=folder)


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
    data_root: str | os.PathLike | None = None,
    tokens: int | None = None,
) -> tuple[str, xr.Dataset]:
    """SNP tensor of a training run's checkpoint, logged in an ``snp`` child run.

    ``readout="token"`` (with ``tokens`` = K, default 100) is the token-level SNP of a run
    pre-trained as a masked language model (:func:`statmech_nn.snp.token_runs.token_for_run`);
    the other readouts are for classification runs, and each is refused (ConfigError) for the
    other kind of run.

    Loads the checkpoint (``epoch`` or the last), rebuilds the run's data without augmentation,
    trains the readouts on the train split and computes the matrices on ``split``. The child run
    gets the tag ``statmech_nn.kind=snp``, every choice as a param, the metrics
    ``acc.readout.{kind}.{block_i|conv_i}``, the trained readouts (``snp/readouts.pt`` and
    ``snp/readouts.json``, see :func:`~statmech_nn.snp.store.save_readouts`) and the artifact
    ``snp/snp.nc``, logged only once the tensor is complete (an interrupted run ends FAILED
    without an artifact). The data are read from ``data_root`` (else ``$STATMECH_DATA``, else
    ``./data``), never from where the run's config says, and never downloaded. Returns
    ``(child_run_id, dataset)``.
    """
    import mlflow

    from statmech_nn import tracking
    from statmech_nn.data import data_for_analysis

    if readout == TOKEN_READOUT:
        from statmech_nn.snp.token_runs import token_for_run

        return token_for_run(
            run_id,
            epoch=epoch,
            sites=sites,
            tokens=100 if tokens is None else tokens,
            readout_epochs=readout_epochs,
            batch_size=batch_size,
            split=split,
            seed=seed,
            device=device,
            progress=progress,
            tracking_uri=tracking_uri,
            limit_train=limit_train,
            limit_eval=limit_eval,
            readout_options=readout_options,
            data_root=data_root,
        )
    if tokens is not None:
        raise ConfigError(f"--tokens K is for --readout token, not --readout {readout}")
    check_options(readout, silencing, split)
    tracking.init_store(tracking_uri)
    ckpt = tracking.load_checkpoint(run_id, epoch)
    refuse_mlm_run(run_id, ckpt.config, readout)
    site_list = resolve(ckpt.model, sites)
    data = data_for_analysis(ckpt.config, augment="none", data_root=data_root)
    limits = {"limit_train": limit_train, "limit_eval": limit_eval}
    splits = limited_splits(run_id, data, split, seed=seed, **limits)
    options = dict(readout_options or {})
    config = ReadoutConfig(
        readout=readout, epochs=readout_epochs, batch_size=batch_size, seed=seed, **options
    )
    settings: dict[str, Any] = dict(
        readout=readout,
        silencing=silencing,
        readout_epochs=readout_epochs,
        batch_size=batch_size,
        chunk_size=chunk_size,
        split=split,
        seed=seed,
    )
    recorded = dict(settings, checkpoint_epoch=ckpt.epoch, **limits)
    with tracking.child_run(run_id, KIND_SNP) as active:
        child_id = active.info.run_id
        mlflow.set_tag(KIND_TAG, KIND_SNP)
        mlflow.log_params(run_params(site_list, config, recorded))
        ds, trained = cast(
            tuple[xr.Dataset, dict[str, Readout]],
            compute(
                ckpt.model,
                splits,
                site_list,
                device=device,
                progress=progress,
                readout_options=options,
                attrs=provenance(ckpt, child_id, run_id),
                return_readouts=True,
                **settings,
            ),
        )
        mlflow.log_metrics(readout_metrics(ds, site_list))
        log_artifacts(ds, trained)
    return child_id, ds


for_run = compute_for_run
"""The orchestration entry point of the SNP analysis (the ``statmech-nn snp`` command)."""
