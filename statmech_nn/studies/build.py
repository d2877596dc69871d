"""Build (once) the ANDC problem folder of an SNP run from its tensor, readouts and model."""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from statmech_nn.data.splits import subset
from statmech_nn.errors import SchemaError, StatmechError
from statmech_nn.pruning import FeatureCache, SiteFeatures
from statmech_nn.studies.problem import AndcProblem

_RUN_ID = re.compile(r"[A-Za-z0-9][\w-]{0,255}")


def _param(run: Any, key: str, default: Any = None) -> Any:
    value = run.data.params.get(key)
    if value is None or value == "None":
        return default
    return int(value)


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
) -> Path:
    """The ANDC problem folder of an SNP run (or a training run's newest SNP run).

    Built once and reused: the SNP diagonals of ``kind`` (``layers``, default all) and a
    :class:`FeatureCache` of the readouts' inputs on the SNP's split. The readouts are the ones
    the SNP run logged (``snp/readouts.pt``); for older SNP runs without them they are retrained
    with the run's recorded settings (same seed, data subset and order, so the same weights).
    ``problem.json`` records which (``readouts``: ``stored`` or ``retrained``); the cache's
    unmasked accuracy is checked against the SNP's ``acc_{kind}`` and both are recorded there.
    """
    import torch
    from mlflow.tracking import MlflowClient

    from statmech_nn import snp as snp_mod
    from statmech_nn import tracking
    from statmech_nn.data import data_for_config
    from statmech_nn.pruning import diagonals, site_features
    from statmech_nn.readout import ReadoutConfig, make_loader, train_readouts
    from statmech_nn.sites import ActivationCapture, layer_label, resolve

    if variant not in ("diagonal", "cluster"):
        raise StatmechError(f"unknown ANDC variant {variant!r}; choose diagonal or cluster")
    uri = tracking.init_store(tracking_uri)
    ds = snp_mod.load_from_run(run_id, tracking_uri=uri)
    snp_run_id = str(ds.attrs.get("mlflow_run_id") or run_id)
    if not _RUN_ID.fullmatch(snp_run_id):
        raise SchemaError(
            f"SNP tensor attribute mlflow_run_id={snp_run_id!r} is not a valid MLflow run id"
        )
    if f"snp_{kind}" not in ds:
        kinds = [str(v)[4:] for v in ds.data_vars if str(v).startswith("snp_")]
        raise SchemaError(f"SNP run {snp_run_id} has no site kind {kind!r}; it has {kinds}")
    all_layers = [
        int(v) for v in ds["layer"].values if not np.isnan(ds[f"acc_{kind}"].sel(layer=v))
    ]
    chosen = list(all_layers if layers is None else [int(v) for v in layers])
    missing = sorted(set(chosen) - set(all_layers))
    if missing:
        raise SchemaError(f"SNP run {snp_run_id} has no {kind} layers {missing}: {all_layers}")
    tag = f"{kind}-{variant}{min_cluster_size}-" + "_".join(map(str, chosen))
    folder = Path(root).resolve() / snp_run_id / tag
    if not folder.is_relative_to(Path(root).resolve()):
        raise SchemaError(f"ANDC problem folder {folder} would leave {root}")
    if (folder / "problem.json").is_file() and not rebuild:
        return folder

    training_run_id = str(ds.attrs.get("training_run_id") or "")
    if not training_run_id:
        raise SchemaError(f"SNP tensor of run {snp_run_id} does not name its training run")
    snp_run = MlflowClient(uri).get_run(snp_run_id)
    ckpt = tracking.load_checkpoint(training_run_id, int(ds.attrs["checkpoint_epoch"]))
    model = ckpt.model
    by_key = {(s.kind, s.layer): s for s in resolve(model, list(ds.attrs["sites"]))}
    sites = [by_key[(kind, layer)] for layer in chosen]
    config = ReadoutConfig(**json.loads(ds.attrs["readout_config"]))
    splits = data_for_config(ckpt.config, augment="none")
    seed = config.seed
    train = subset(splits.train, _param(snp_run, "limit_train"), seed)
    evaluated = subset(getattr(splits, ds.attrs["split"]), _param(snp_run, "limit_eval"), seed)
    num_labels = int(splits.num_classes)
    readouts = snp_mod.load_readouts(snp_run_id, sites, uri, device)
    source = "stored"
    if readouts is None:
        readouts = train_readouts(model, sites, train, num_labels, config, device, progress)
        source = "retrained"
    dev = next(iter(readouts.values())).fc.weight.device
    model.to(dev)
    chunks: dict[int, list[Any]] = {s.layer: [] for s in sites}
    labels = []
    model.eval()
    with ActivationCapture(model, sites) as capture, torch.no_grad():
        for batch in make_loader(evaluated, config.batch_size):
            acts = capture(batch[0].to(dev))
            labels.append(torch.as_tensor(batch[1]).long().numpy())
            for site in sites:
                r = readouts[site.name]
                a = acts[site.name]
                if config.readout == "seqpool":
                    f = site_features(a, "seqpool", r.fc.weight, r.pool.weight[0], r.pool.bias[0])
                elif config.readout == "flatten":
                    f = site_features(a, "flatten", r.weight_jnt())
                else:
                    f = site_features(a, "mean", r.fc.weight)
                chunks[site.layer].append(f)
    cache_sites = {}
    for layer, parts in chunks.items():
        axis = 0 if parts[0].form == "pooled" else 1
        cache_sites[layer] = SiteFeatures(
            parts[0].form, np.concatenate([p.inputs for p in parts], axis=axis), parts[0].weight
        )
    cache = FeatureCache(
        labels=np.concatenate(labels),
        sites=cache_sites,
        meta={"snp_run_id": snp_run_id, "split": ds.attrs["split"], "readout": config.readout},
    )
    diag = diagonals(ds, kind).sel(layer=chosen).values
    matrices = None
    if variant == "cluster":
        from statmech_nn.order.schema import node_matrices

        matrices = node_matrices(ds, kind).sel(layer=chosen).values
    snp_acc = {layer: float(ds[f"acc_{kind}"].sel(layer=layer)) for layer in chosen}
    cache_acc = cache.base_accuracy()
    mismatch = {
        k: (snp_acc[k], cache_acc[k]) for k in chosen if abs(snp_acc[k] - cache_acc[k]) > 1e-6
    }
    if mismatch:
        stderr(
            f"warning: {source} readouts do not reproduce the SNP run's accuracy exactly "
            f"(layer: (snp, cache) = {mismatch}); masks come from the stored SNP matrices"
        )
    names = [layer_label(s) for s in sites]
    problem = AndcProblem(
        cache=cache,
        diag=diag,
        site_names=names,
        kind=kind,
        variant=variant,
        min_cluster_size=int(min_cluster_size),
        matrices=matrices,
        meta={
            "snp_run_id": snp_run_id,
            "training_run_id": training_run_id,
            "readout": config.readout,
            "readouts": source,
            "silencing": str(ds.attrs.get("silencing", "")),
            "snp_accuracy": {str(k): v for k, v in snp_acc.items()},
            "cache_accuracy": {str(k): v for k, v in cache_acc.items()},
        },
    )
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    problem.save(tmp)
    if folder.exists():
        import shutil

        shutil.rmtree(folder)
    tmp.rename(folder)
    return folder


def stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
