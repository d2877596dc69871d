"""Build (once) the ANDC problem folder of an SNP run from its tensor, readouts and model.

:func:`build_problem` runs named steps: read the SNP tensor and choose its layers
(:func:`snp_layers`), name the folder (:func:`problem_folder`), load what the SNP run analysed
(:func:`load_sources`), get its readouts (:func:`readouts_for`), cache the readouts' inputs on
the SNP's split (:func:`feature_cache`), check the cache against the SNP accuracies
(:func:`checked_accuracies`) and save the problem atomically (:func:`save_replacing`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr

from statmech_nn.data.splits import subset
from statmech_nn.errors import SchemaError
from statmech_nn.pruning.features import FeatureCache, SiteFeatures, site_features
from statmech_nn.pruning.masks import check_variant, diagonals
from statmech_nn.studies.problem import AndcProblem

if TYPE_CHECKING:
    from statmech_nn.readout import ReadoutConfig
    from statmech_nn.sites import Site
    from statmech_nn.tracking import LoadedCheckpoint

_RUN_ID = re.compile(r"[A-Za-z0-9][\w-]{0,255}")


def _param(run: Any, key: str, default: Any = None) -> Any:
    value = run.data.params.get(key)
    if value is None or value == "None":
        return default
    return int(value)


@dataclass
class Sources:
    """What an SNP run analysed: model checkpoint, sites, readout settings and data subsets."""

    checkpoint: LoadedCheckpoint
    sites: list[Site]
    config: ReadoutConfig
    train: Any
    evaluated: Any
    num_labels: int


def snp_layers(
    run_id: str, kind: str, layers: Sequence[int] | None, uri: str
) -> tuple[xr.Dataset, str, list[int]]:
    """The SNP tensor of ``run_id``, its SNP run id, and the chosen analysed ``kind`` layers."""
    from statmech_nn import snp as snp_mod

    ds = snp_mod.load_from_run(run_id, tracking_uri=uri)
    snp_run_id = str(ds.attrs.get("mlflow_run_id") or run_id)
    if not _RUN_ID.fullmatch(snp_run_id):
        raise SchemaError(
            f"SNP tensor attribute mlflow_run_id={snp_run_id!r} is not a valid MLflow run id"
        )
    if f"snp_{kind}" not in ds:
        kinds = [str(v)[4:] for v in ds.data_vars if str(v).startswith("snp_")]
        raise SchemaError(f"SNP run {snp_run_id} has no site kind {kind!r}; it has {kinds}")
    analysed = [int(v) for v in ds["layer"].values if not np.isnan(ds[f"acc_{kind}"].sel(layer=v))]
    chosen = list(analysed if layers is None else [int(v) for v in layers])
    missing = sorted(set(chosen) - set(analysed))
    if missing:
        raise SchemaError(f"SNP run {snp_run_id} has no {kind} layers {missing}: {analysed}")
    return ds, snp_run_id, chosen


def problem_folder(
    root: str | Path,
    snp_run_id: str,
    kind: str,
    variant: str,
    min_cluster_size: int,
    layers: Sequence[int],
) -> Path:
    """``root/<snp run>/<kind>-<variant><min size>-<layers>``, refused if it leaves ``root``."""
    tag = f"{kind}-{variant}{min_cluster_size}-" + "_".join(map(str, layers))
    base = Path(root).resolve()
    folder = base / snp_run_id / tag
    if not folder.is_relative_to(base):
        raise SchemaError(f"ANDC problem folder {folder} would leave {root}")
    return folder


def load_sources(
    ds: xr.Dataset,
    snp_run_id: str,
    kind: str,
    layers: Sequence[int],
    uri: str,
    data_root: str | os.PathLike | None = None,
) -> Sources:
    """The checkpoint, sites, readout settings and data subsets that the SNP run used.

    The data are read from ``data_root`` (see :func:`~statmech_nn.data.data_for_analysis`).
    """
    from mlflow.tracking import MlflowClient

    from statmech_nn import tracking
    from statmech_nn.data import data_for_analysis
    from statmech_nn.readout import ReadoutConfig
    from statmech_nn.sites import resolve
    from statmech_nn.snp.tokens import refuse_token_readout

    refuse_token_readout(ds, "the ANDC study")
    training_run_id = str(ds.attrs.get("training_run_id") or "")
    if not training_run_id:
        raise SchemaError(f"SNP tensor of run {snp_run_id} does not name its training run")
    snp_run = MlflowClient(uri).get_run(snp_run_id)
    ckpt = tracking.load_checkpoint(training_run_id, int(ds.attrs["checkpoint_epoch"]))
    by_key = {(s.kind, s.layer): s for s in resolve(ckpt.model, list(ds.attrs["sites"]))}
    config = ReadoutConfig(**json.loads(ds.attrs["readout_config"]))
    splits = data_for_analysis(ckpt.config, augment="none", data_root=data_root)
    split = getattr(splits, ds.attrs["split"])
    return Sources(
        checkpoint=ckpt,
        sites=[by_key[(kind, layer)] for layer in layers],
        config=config,
        train=subset(splits.train, _param(snp_run, "limit_train"), config.seed),
        evaluated=subset(split, _param(snp_run, "limit_eval"), config.seed),
        num_labels=int(splits.num_classes),
    )


def readouts_for(
    snp_run_id: str, src: Sources, uri: str, device: str | None, progress: bool
) -> tuple[dict[str, Any], str]:
    """The SNP run's stored readouts (``"stored"``), else ones retrained alike (``"retrained"``)."""
    from statmech_nn import snp as snp_mod
    from statmech_nn.readout import train_readouts

    readouts = snp_mod.load_readouts(snp_run_id, src.sites, uri, device)
    if readouts is not None:
        return readouts, "stored"
    model = src.checkpoint.model
    trained = train_readouts(
        model, src.sites, src.train, src.num_labels, src.config, device, progress
    )
    return trained, "retrained"


def _batch_features(activations: Any, readout: Any, form: str, mask: Any = None) -> SiteFeatures:
    """One batch's readout inputs of a site, for readout form ``form`` (``mask``: text padding)."""
    if form == "seqpool":
        g, g0 = readout.pool.weight[0], readout.pool.bias[0]
        return site_features(activations, "seqpool", readout.fc.weight, g, g0, mask=mask)
    if form == "flatten":
        return site_features(activations, "flatten", readout.weight_jnt(), mask=mask)
    return site_features(activations, "mean", readout.fc.weight, mask=mask)


def _concatenated(parts: Sequence[SiteFeatures]) -> SiteFeatures:
    """Batches of one site's features joined along the sample axis."""
    axis = 0 if parts[0].form == "pooled" else 1
    inputs = np.concatenate([p.inputs for p in parts], axis=axis)
    return SiteFeatures(parts[0].form, inputs, parts[0].weight)


def feature_cache(src: Sources, readouts: dict[str, Any], meta: dict[str, Any]) -> FeatureCache:
    """The readouts' inputs of every chosen site on the SNP's split (one backbone pass)."""
    import torch

    from statmech_nn.batches import padding_mask, split_batch
    from statmech_nn.readout import make_loader
    from statmech_nn.readout.modules import site_mask
    from statmech_nn.sites import ActivationCapture

    model = src.checkpoint.model
    dev = next(iter(readouts.values())).fc.weight.device
    model.to(dev).eval()
    chunks: dict[int, list[SiteFeatures]] = {s.layer: [] for s in src.sites}
    labels = []
    with ActivationCapture(model, src.sites) as capture, torch.no_grad():
        for batch in make_loader(src.evaluated, src.config.batch_size):
            x, y = split_batch(batch, dev)
            acts = capture(x)
            labels.append(y.cpu().numpy())
            for site in src.sites:
                a = acts[site.name]
                mask = site_mask(padding_mask(x), a)
                part = _batch_features(a, readouts[site.name], src.config.readout, mask)
                chunks[site.layer].append(part)
    sites = {layer: _concatenated(parts) for layer, parts in chunks.items()}
    return FeatureCache(labels=np.concatenate(labels), sites=sites, meta=meta)


def checked_accuracies(
    ds: xr.Dataset, kind: str, layers: Sequence[int], cache: FeatureCache, source: str
) -> tuple[dict[int, float], dict[int, float]]:
    """The SNP's and the cache's unmasked accuracies per layer; warns where they differ."""
    snp_acc = {layer: float(ds[f"acc_{kind}"].sel(layer=layer)) for layer in layers}
    cache_acc = cache.base_accuracy()
    mismatch = {
        k: (snp_acc[k], cache_acc[k]) for k in layers if abs(snp_acc[k] - cache_acc[k]) > 1e-6
    }
    if mismatch:
        stderr(
            f"warning: {source} readouts do not reproduce the SNP run's accuracy exactly "
            f"(layer: (snp, cache) = {mismatch}); masks come from the stored SNP matrices"
        )
    return snp_acc, cache_acc


def snp_arrays(
    ds: xr.Dataset, kind: str, layers: Sequence[int], variant: str
) -> tuple[np.ndarray, np.ndarray | None]:
    """Diagonals ``[layer, node, label]`` of the chosen layers, and the full matrices for
    the ``cluster`` variant (``None`` otherwise)."""
    from statmech_nn.order.schema import node_matrices

    diag = diagonals(ds, kind).sel(layer=list(layers)).values
    if variant != "cluster":
        return diag, None
    return diag, node_matrices(ds, kind).sel(layer=list(layers)).values


def problem_meta(
    ds: xr.Dataset,
    snp_run_id: str,
    readout: str,
    source: str,
    snp_acc: dict[int, float],
    cache_acc: dict[int, float],
) -> dict[str, Any]:
    """What ``problem.json`` records of the problem's provenance and accuracy check."""
    return {
        "snp_run_id": snp_run_id,
        "training_run_id": str(ds.attrs["training_run_id"]),
        "readout": readout,
        "readouts": source,
        "silencing": str(ds.attrs.get("silencing", "")),
        "snp_accuracy": {str(k): v for k, v in snp_acc.items()},
        "cache_accuracy": {str(k): v for k, v in cache_acc.items()},
    }


def save_replacing(problem: AndcProblem, folder: Path) -> Path:
    """Save ``problem`` beside ``folder`` and rename it into place (replacing an old one)."""
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    problem.save(tmp)
    if folder.exists():
        shutil.rmtree(folder)
    tmp.rename(folder)
    return folder


def build_problem(
    run_id: str,
    kind: str = "ff",
    layers: Sequence[int] | None = None,
    variant: str = "diagonal",
    min_cluster_size: int = 1,
    root: str | Path = Path("mlruns") / "andc",
    device: str | None = None,
    progress: bool = True,
    tracking_uri: str | None = None,
    rebuild: bool = False,
    data_root: str | os.PathLike | None = None,
) -> Path:
    """The ANDC problem folder of an SNP run (or a training run's newest SNP run).

    Built once and reused: the SNP diagonals of ``kind`` (``layers``, default all) and a
    :class:`FeatureCache` of the readouts' inputs on the SNP's split. The readouts are the ones
    the SNP run logged (``snp/readouts.pt``); for older SNP runs without them they are retrained
    with the run's recorded settings (same seed, data subset and order, so the same weights).
    ``problem.json`` records which (``readouts``: ``stored`` or ``retrained``); the cache's
    unmasked accuracy is checked against the SNP's ``acc_{kind}`` and both are recorded there.
    """
    from statmech_nn import tracking
    from statmech_nn.sites import layer_label

    check_variant(variant)
    uri = tracking.init_store(tracking_uri)
    ds, snp_run_id, chosen = snp_layers(run_id, kind, layers, uri)
    folder = problem_folder(root, snp_run_id, kind, variant, min_cluster_size, chosen)
    if (folder / "problem.json").is_file() and not rebuild:
        return folder
    src = load_sources(ds, snp_run_id, kind, chosen, uri, data_root)
    readouts, source = readouts_for(snp_run_id, src, uri, device, progress)
    split, readout = ds.attrs["split"], src.config.readout
    cache_meta = {"snp_run_id": snp_run_id, "split": split, "readout": readout}
    cache = feature_cache(src, readouts, cache_meta)
    snp_acc, cache_acc = checked_accuracies(ds, kind, chosen, cache, source)
    diag, matrices = snp_arrays(ds, kind, chosen, variant)
    problem = AndcProblem(
        cache=cache,
        diag=diag,
        site_names=[layer_label(s) for s in src.sites],
        kind=kind,
        variant=variant,
        min_cluster_size=int(min_cluster_size),
        matrices=matrices,
        meta=problem_meta(ds, snp_run_id, readout, source, snp_acc, cache_acc),
    )
    return save_replacing(problem, folder)


def stderr(msg: str) -> None:
    """Print ``msg`` to stderr at once (warnings of the study commands)."""
    print(msg, file=sys.stderr, flush=True)
