"""The cooperation analysis of an SNP run, end to end: a ``cooperation`` child run (section 11).

:func:`for_run` is what ``statmech-nn cooperation`` runs. It finds the SNP run, rebuilds the
checkpoint's model and the data exactly as the SNP run saw them (same dataset, split, seed and
sample limits through ``Splits.limited``), takes every node's ``D_n`` from the stored SNP
diagonals and the readout weights of the bound from the stored readouts, computes per layer the
subset curve (:func:`statmech_nn.cooperation.subset_curve`) and the single-node bound
(:func:`statmech_nn.cooperation_store.bound_dataset`), and only then logs a child run tagged
``naming.KIND_TAG = naming.KIND_COOPERATION`` with the metrics of
:func:`statmech_nn.cooperation_store.metrics`, the dataset ``cooperation/cooperation.nc`` and the
figures. Every option is checked before anything is computed or logged.

Subset readouts see, per ``features``: ``tokens`` (the site's activations ``[S, T, N]``, padding
masked; a fresh readout of the SNP run's kind on the subset's nodes only), or ``pooled`` (one
scalar per node: the token mean for ``mean``; for ``seqpool`` the stored readout's own pooled
input ``z``, whose pooling weights come from all nodes). ``auto`` is ``pooled`` for ``mean``
(exactly the same readout, cheaper) and ``tokens`` otherwise. A ``flatten`` readout needs tokens.

A token-level SNP run (``readout = "token"``) is always ``pooled``: each kept masked position is
a sample, its features the site activation there, its label the index of its true token among
the ``K`` (the positions, masks and labels of the SNP computation itself); subset readouts are
bias-free ``Linear(n, K)`` trained with the SNP run's readout settings, the random guess is
``1 / K``, and the bound is the scalar one of a bias-free readout (at most two labels a node).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import xarray as xr

from statmech_nn import cooperation, cooperation_store
from statmech_nn.cooperation_bound import DOMAINS
from statmech_nn.cooperation_sources import (
    FEATURES,
    analysed_layers,
    check_sizes,
    feature_form,
    is_token_run,
    readout_weight,
    site_features,
    site_heads,
    snp_sources,
    stored_single_labels,
    token_ids,
    token_readouts,
    token_site_features,
)
from statmech_nn.errors import ConfigError, SchemaError
from statmech_nn.naming import KIND_COOPERATION, check_theta

if TYPE_CHECKING:
    from statmech_nn.readout import Readout
    from statmech_nn.sites import Site
    from statmech_nn.studies.build import Sources

ARTIFACT_PATH = "cooperation/cooperation.nc"
"""The cooperation netCDF's artifact path in a ``cooperation`` child run."""


@dataclass(frozen=True)
class CooperationOptions:
    """The choices of one cooperation analysis (see ``statmech-nn cooperation --help``)."""

    kind: str = "ff"
    layers: tuple[int, ...] | None = None
    sizes: tuple[int, ...] | None = None
    draws: int = 5
    within_head: bool = False
    theta: float = 0.3
    seed: int = 0
    domain: str = "real"
    features: str = "auto"

    def check(self) -> None:
        """Refuse (one :class:`ConfigError`) any choice that no SNP run could use."""
        if not isinstance(self.kind, str) or not self.kind:
            raise ConfigError(f"site kind must be a non-empty name, got {self.kind!r}")
        check_theta(self.theta)
        _positive_ints("--layers", self.layers, minimum=0)
        _positive_ints("--sizes", self.sizes, minimum=1)
        if isinstance(self.draws, bool) or not isinstance(self.draws, int) or self.draws < 1:
            raise ConfigError(f"--draws must be an integer >= 1, got {self.draws!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"--seed must be an integer >= 0, got {self.seed!r}")
        if self.domain not in DOMAINS:
            raise ConfigError(f"unknown input domain {self.domain!r}: choose {', '.join(DOMAINS)}")
        if self.features not in FEATURES:
            raise ConfigError(f"unknown features {self.features!r}: choose {', '.join(FEATURES)}")


def _positive_ints(flag: str, values: Sequence[int] | None, minimum: int) -> None:
    """Refuse an empty list, non-integers, repeats or values below ``minimum``."""
    if values is None:
        return
    items = list(values)
    if not items or any(isinstance(v, bool) or not isinstance(v, int | np.integer) for v in items):
        raise ConfigError(f"{flag} must be a non-empty list of integers, got {values!r}")
    if min(items) < minimum:
        raise ConfigError(f"{flag} must all be >= {minimum}, got {items}")
    if len(set(items)) != len(items):
        raise ConfigError(f"{flag} lists a value twice: {items}")


@dataclass
class CooperationResult:
    """The ``cooperation`` child run, its SNP run, the stacked dataset and its metrics."""

    run_id: str
    snp_run_id: str
    dataset: xr.Dataset
    metrics: dict[str, float]


# -- the analysis --------------------------------------------------------------------------------


@dataclass
class _Plan:
    """Everything checked before the analysis runs: sources, readouts and per-layer choices."""

    options: CooperationOptions
    ds: xr.Dataset
    snp_run_id: str
    parent_run_id: str
    layers: list[int]
    sources: Sources
    readouts: dict[str, Readout]
    readouts_source: str
    form: str
    sizes: list[int]
    heads: dict[int, np.ndarray | None]


def plan(
    run_id: str,
    options: CooperationOptions,
    uri: str,
    device: str | None,
    progress: bool,
    data_root: str | os.PathLike | None = None,
) -> _Plan:
    """Find and load what the SNP run analysed (data from ``data_root``); check every option."""
    from statmech_nn import snp, tracking
    from statmech_nn.studies.build import readouts_for

    found = snp.find_snp_run(run_id, uri)
    ds = snp.load_from_run(found.snp_run_id, tracking_uri=uri)
    form = feature_form(str(ds.attrs.get("readout", "seqpool")), options.features)
    layers = analysed_layers(ds, options.kind, options.layers)
    params = tracking.get_run(found.snp_run_id).data.params
    src = snp_sources(ds, params, options.kind, layers, data_root)
    widths = {int(ds[f"node_count_{options.kind}"].sel(layer=k)) for k in layers}
    if len(widths) != 1:
        raise ConfigError(
            f"the {options.kind} layers {layers} differ in width {sorted(widths)}: pick layers of "
            "one width with --layers"
        )
    nodes = widths.pop()
    heads = {s.layer: site_heads(s, nodes) if options.within_head else None for s in src.sites}
    sizes = [check_sizes(options.sizes, nodes, h) for h in heads.values()]
    if any(s != sizes[0] for s in sizes):
        raise ConfigError(f"the {options.kind} layers' heads differ in size: pass --sizes")
    if is_token_run(ds):
        readouts, source = _token_readouts(found.snp_run_id, ds, src, uri, device, progress)
    else:
        readouts, source = readouts_for(found.snp_run_id, src, uri, device, progress)
    parent = found.training_run_id or found.snp_run_id
    return _Plan(
        options, ds, found.snp_run_id, parent, layers, src, readouts, source, form, sizes[0], heads
    )


def _token_readouts(
    snp_run_id: str, ds: xr.Dataset, src: Sources, uri: str, device: str | None, progress: bool
) -> tuple[dict[str, Readout], str]:
    """A token SNP run's stored readouts (``"stored"``), else ones retrained alike."""
    from statmech_nn import snp
    from statmech_nn.readout import resolve_device

    stored = snp.load_readouts(snp_run_id, src.sites, uri, device)
    if stored is not None:
        return stored, "stored"
    return token_readouts(src, token_ids(ds), resolve_device(device), progress), "retrained"


def layer_result(p: _Plan, site: Site, device: torch.device) -> xr.Dataset:
    """The subset curve and the single-node bound of one site."""
    readout = p.readouts[site.name]
    model, config = p.sources.checkpoint.model, p.sources.config
    datasets = (p.sources.train, p.sources.evaluated)
    if is_token_run(p.ds):
        tokens = token_ids(p.ds)
        train, test = (
            token_site_features(model, site, data, tokens, config.batch_size, device)
            for data in datasets
        )
    else:
        train, test = (
            site_features(model, site, readout, data, p.form, config.batch_size, device)
            for data in datasets
        )
    single = stored_single_labels(p.ds, p.options.kind, site.layer, p.options.theta)
    if single.shape[0] != train.num_nodes:
        raise SchemaError(
            f"site {site.name}: the SNP tensor has {single.shape[0]} nodes, the site "
            f"{train.num_nodes}"
        )
    curve = cooperation.subset_curve(
        train,
        test,
        p.sources.num_labels,
        single,
        sizes=p.sizes,
        draws=p.options.draws,
        seed=p.options.seed,
        config=config,
        heads=p.heads[site.layer],
        theta=p.options.theta,
    )
    bound = cooperation_store.bound_dataset(
        readout_weight(readout), single, domain=p.options.domain
    )
    return cooperation_store.site_result(curve, bound)


def analyse(p: _Plan, device: str | torch.device | None = None) -> xr.Dataset:
    """The stacked cooperation dataset of every planned layer."""
    from statmech_nn.readout import resolve_device

    dev = resolve_device(device)
    per_layer = {site.layer: layer_result(p, site, dev) for site in p.sources.sites}
    names = [str(v) for v in p.ds["label_name_true"].values] if "label_name_true" in p.ds else None
    out = cooperation_store.stack_layers(per_layer, p.options.kind, names)
    out.attrs.update(
        snp_run_id=p.snp_run_id,
        training_run_id=str(p.ds.attrs.get("training_run_id", "")),
        checkpoint_epoch=int(p.ds.attrs.get("checkpoint_epoch", -1)),
        readout=str(p.ds.attrs.get("readout", "")),
        silencing=str(p.ds.attrs.get("silencing", "")),
        split=str(p.ds.attrs.get("split", "")),
        features=p.form,
        readouts=p.readouts_source,
    )
    return out


def run_params(p: _Plan) -> dict[str, Any]:
    """The ``cooperation`` child run's params."""
    o = p.options
    return {
        "snp_run_id": p.snp_run_id,
        "kind": o.kind,
        "layers": ",".join(map(str, p.layers)),
        "sizes": ",".join(map(str, p.sizes)),
        "draws": o.draws,
        "within_head": o.within_head,
        "theta": o.theta,
        "seed": o.seed,
        "domain": o.domain,
        "features": p.form,
        "readouts": p.readouts_source,
        "checkpoint_epoch": int(p.ds.attrs.get("checkpoint_epoch", -1)),
    }


def for_run(
    run_id: str,
    kind: str = "ff",
    layers: Sequence[int] | None = None,
    sizes: Sequence[int] | None = None,
    draws: int = 5,
    within_head: bool = False,
    theta: float = 0.3,
    seed: int = 0,
    device: str | None = None,
    tracking_uri: str | None = None,
    domain: str = "real",
    features: str = "auto",
    progress: bool = False,
    data_root: str | os.PathLike | None = None,
) -> CooperationResult:
    """Node cooperation and the single-node bound of an SNP run, logged as a ``cooperation`` run.

    ``run_id`` is an SNP run or a training run (its newest finished SNP child). The child run
    sits under the training run, tagged ``statmech_nn.kind=cooperation``, with every choice as
    a param, the metrics ``coop.*`` / ``bound.*`` (:func:`cooperation_store.metrics`), the
    artifact ``cooperation/cooperation.nc`` and PNG figures under ``figures/``. It is created
    only after the whole analysis succeeded, so a refused option or a failure leaves no run.
    The data are read from ``data_root`` (see :func:`~statmech_nn.data.data_for_analysis`).
    """
    from statmech_nn import tracking

    options = CooperationOptions(
        kind=kind,
        layers=None if layers is None else tuple(layers),
        sizes=None if sizes is None else tuple(sizes),
        draws=draws,
        within_head=within_head,
        theta=theta,
        seed=seed,
        domain=domain,
        features=features,
    )
    options.check()
    uri = tracking.init_store(tracking_uri)
    planned = plan(run_id, options, uri, device, progress, data_root)
    ds = analyse(planned, device)
    metrics = cooperation_store.metrics(ds)
    with tracking.run(
        None, run_name="cooperation", parent_run_id=planned.parent_run_id, kind=KIND_COOPERATION
    ) as active:
        _log(ds, planned, metrics)
    return CooperationResult(active.info.run_id, planned.snp_run_id, ds, metrics)


def _log(ds: xr.Dataset, p: _Plan, metrics: dict[str, float]) -> None:
    """Params, metrics (step = the checkpoint's epoch), figures, then the dataset artifact."""
    import mlflow

    from statmech_nn import cooperation_figures

    mlflow.log_params(run_params(p))
    mlflow.log_metrics(metrics, step=max(int(ds.attrs.get("checkpoint_epoch", 0)), 0))
    with tempfile.TemporaryDirectory() as tmp:
        for path in cooperation_figures.all_figures(ds, Path(tmp) / "figures"):
            mlflow.log_artifact(str(path), artifact_path="figures")
        target = Path(tmp) / Path(ARTIFACT_PATH).name
        cooperation_store.save(ds, target)
        mlflow.log_artifact(str(target), artifact_path=str(Path(ARTIFACT_PATH).parent))


def load_from_run(run_id: str, tracking_uri: str | None = None) -> xr.Dataset:
    """The cooperation dataset logged by a ``cooperation`` run."""
    import mlflow

    from statmech_nn import tracking
    from statmech_nn.errors import TrackingError

    uri = tracking.resolve_uri(tracking_uri)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path=ARTIFACT_PATH, dst_path=tmp, tracking_uri=uri
            )
        except Exception as exc:  # mlflow raises MlflowException subclasses
            raise TrackingError(f"run {run_id} has no artifact {ARTIFACT_PATH} ({exc})") from exc
        return cooperation_store.load(local)
