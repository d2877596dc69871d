"""The order analysis of an SNP run, end to end: check, analyse, log an ``order`` child run.

:func:`for_run` is what ``statmech-nn order`` runs. Every option, the SNP run and (with
``over_checkpoints``) every checkpoint of the training run are checked before the child run is
created, so a mistake leaves no FAILED run behind.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import xarray as xr

from statmech_nn.errors import ConfigError, TrackingError
from statmech_nn.naming import KIND_ORDER, KIND_TAG, check_theta
from statmech_nn.order.stats import SNR_VARIANTS

SNR_FORMS = ("ratio", "mean")


@dataclass(frozen=True)
class OrderOptions:
    """The choices of one order analysis (see ``statmech-nn order --help``)."""

    theta: float = 0.3
    snr: str = "labels"
    snr_form: str = "ratio"
    null_permutations: int = 1000
    seed: int = 0
    over_checkpoints: bool = False
    gallery_nodes: int = 4
    device: str | None = None

    def check(self) -> None:
        """Refuse (one :class:`ConfigError`) any choice the analysis cannot use."""
        check_theta(self.theta)
        if self.snr not in SNR_VARIANTS:
            raise ConfigError(f"unknown SNR variant {self.snr!r}; choose one of {SNR_VARIANTS}")
        if self.snr_form not in SNR_FORMS:
            raise ConfigError(f"unknown SNR form {self.snr_form!r}; choose one of {SNR_FORMS}")
        if self.null_permutations < 1:
            raise ConfigError(f"--null-permutations must be >= 1, got {self.null_permutations}")
        if self.gallery_nodes < 1:
            raise ConfigError(f"--gallery-nodes must be >= 1, got {self.gallery_nodes}")


@dataclass
class OrderResult:
    """The ``order`` child run, its metrics, and the metrics of every checkpoint analysed."""

    run_id: str
    metrics: dict[str, float]
    by_epoch: dict[int, dict[str, float]] = field(default_factory=dict)


@dataclass
class _Analysis:
    stats: dict[str, xr.Dataset]
    syms: dict[str, xr.Dataset]
    metrics: dict[str, float]


@dataclass
class _CheckpointPlan:
    training_run_id: str
    settings: dict[str, Any]
    epochs: list[int]
    splits: Any


def for_run(
    run_id: str,
    options: OrderOptions | None = None,
    tracking_uri: str | None = None,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    data_root: str | os.PathLike | None = None,
) -> OrderResult:
    """Order parameters of an SNP run (or a training run's newest), logged as an ``order`` child.

    With ``options.over_checkpoints`` every checkpoint of the training run is analysed with the
    SNP run's settings too (metrics logged with step = epoch, ``on_epoch(epoch, metrics)``
    called after each), on the data under ``data_root`` (see
    :func:`~statmech_nn.data.data_for_analysis`).
    """
    from statmech_nn import snp, tracking
    from statmech_nn.snp.runs import find_snp_run

    options = options or OrderOptions()
    options.check()
    tracking.init_store(tracking_uri)
    found = find_snp_run(run_id)
    if options.over_checkpoints and found.training_run_id is None:
        raise TrackingError(
            f"SNP run {found.snp_run_id} has no parent training run; --over-checkpoints needs "
            "the training run's checkpoints"
        )
    ds = snp.load_from_run(found.snp_run_id, tracking_uri=tracking.current_uri())
    snp_epoch = int(ds.attrs.get("checkpoint_epoch", -1))
    plan = _plan_checkpoints(found, ds, snp_epoch, data_root) if options.over_checkpoints else None
    analysis = analyse(ds, options)
    parent = found.training_run_id or found.snp_run_id
    with tracking.run(
        None, run_name="order", parent_run_id=parent, tags={KIND_TAG: KIND_ORDER}
    ) as active:
        _log_analysis(ds, analysis, options, found.snp_run_id, snp_epoch)
        by_epoch = {}
        if plan is not None:
            by_epoch = _log_over_checkpoints(plan, ds, snp_epoch, analysis, options, on_epoch)
    return OrderResult(active.info.run_id, analysis.metrics, by_epoch)


def analyse(ds: xr.Dataset, options: OrderOptions) -> _Analysis:
    """Statistics per kind, head symmetry per MHA kind, and the metrics that are logged."""
    from statmech_nn import order

    stats = order.statistics(ds, options.theta)
    syms = {
        kind: order.head_symmetry(
            ds, options.theta, kind, permutations=options.null_permutations, seed=options.seed
        )
        for kind in order.head_kinds(ds)
    }
    labels = order.layer_labels(ds)
    metrics = order.site_metrics(stats, options.snr, options.snr_form, labels)
    for sym in syms.values():
        metrics.update(order.symmetry_metrics(sym, labels))
    return _Analysis(stats, syms, metrics)


def summary(metrics: dict[str, float]) -> str:
    """The SNR and Q metrics as one ``name=value, ...`` line."""
    keys = sorted(k for k in metrics if k.startswith(("snr.", "order.Q.")))
    return ", ".join(f"{k}={metrics[k]:.3g}" for k in keys)


def _plan_checkpoints(
    found: Any, ds: xr.Dataset, snp_epoch: int, data_root: str | os.PathLike | None
) -> _CheckpointPlan:
    """The SNP run's settings and the checkpoints to analyse, all loaded once to check them."""
    from statmech_nn import tracking
    from statmech_nn.order.checkpoints import checkpoint_data, checkpoint_epochs, snp_settings

    training = found.training_run_id
    settings = snp_settings(ds, tracking.get_run(found.snp_run_id).data.params)
    epochs = checkpoint_epochs(training)
    others = [e for e in epochs if e != snp_epoch]
    splits = checkpoint_data(training, settings, others, data_root)
    return _CheckpointPlan(training, settings, epochs, splits)


def _log_analysis(
    ds: xr.Dataset, analysis: _Analysis, options: OrderOptions, snp_run_id: str, snp_epoch: int
) -> None:
    """Params, the metrics (step = the SNP run's epoch) and the figures of the active run."""
    import mlflow

    mlflow.log_params(
        {
            "snp_run_id": snp_run_id,
            "theta": options.theta,
            "snr": options.snr,
            "snr_form": options.snr_form,
            "null_permutations": options.null_permutations,
            "seed": options.seed,
            "over_checkpoints": options.over_checkpoints,
            "checkpoint_epoch": snp_epoch,
        }
    )
    mlflow.log_metrics(analysis.metrics, step=max(snp_epoch, 0))
    with tempfile.TemporaryDirectory() as tmp:
        for path in _figures(ds, analysis, options, Path(tmp)):
            mlflow.log_artifact(str(path), artifact_path="figures")


def _figures(ds: xr.Dataset, analysis: _Analysis, options: OrderOptions, folder: Path) -> list:
    from statmech_nn import figures, order

    paths = [figures.depth_profile(analysis.stats, folder / "depth.png", options.snr)]
    for kind, st in analysis.stats.items():
        binary = order.binarize(order.node_matrices(ds, kind), options.theta)
        assert isinstance(binary, xr.DataArray)  # a DataArray in, a DataArray out
        binary = binary.assign_coords(valid=st["valid"])
        paths.append(
            figures.node_gallery(binary, folder / f"gallery_{kind}.png", options.gallery_nodes)
        )
    for kind, sym in analysis.syms.items():
        paths.append(figures.expertise_heatmaps(sym, folder / f"expertise_{kind}.png"))
    return paths


def _log_over_checkpoints(
    plan: _CheckpointPlan,
    ds: xr.Dataset,
    snp_epoch: int,
    analysis: _Analysis,
    options: OrderOptions,
    on_epoch: Callable[[int, dict[str, float]], None] | None,
) -> dict[int, dict[str, float]]:
    """Analyse every checkpoint (step = epoch) and log Q over training as figures."""
    import mlflow

    from statmech_nn import figures

    series: dict[str, list[xr.Dataset]] = {}
    by_epoch = {}
    for epoch, ds_e in _checkpoint_datasets(plan, snp_epoch, ds, options.device):
        if epoch == snp_epoch:
            current = analysis
        else:
            current = analyse(ds_e, options)
            mlflow.log_metrics(current.metrics, step=epoch)
        for kind, sym in current.syms.items():
            q = sym[["Q", "Q_null_mean", "Q_null_std", "Q_pvalue"]]
            series.setdefault(kind, []).append(q.expand_dims(epoch=[epoch]))
        by_epoch[epoch] = current.metrics
        if on_epoch is not None:
            on_epoch(epoch, current.metrics)
    with tempfile.TemporaryDirectory() as tmp:
        for kind, parts in series.items():
            q = xr.concat(parts, dim="epoch")
            path = figures.q_over_training(q, Path(tmp) / f"q_over_training_{kind}.png")
            mlflow.log_artifact(str(path), artifact_path="figures")
    return by_epoch


def _checkpoint_datasets(
    plan: _CheckpointPlan, snp_epoch: int, ds: xr.Dataset, device: str | None
) -> Iterator[tuple[int, xr.Dataset]]:
    """The SNP dataset of every checkpoint; the SNP run's own epoch reuses its stored tensor."""
    from statmech_nn.order.checkpoints import snp_over_checkpoints

    others = [e for e in plan.epochs if e != snp_epoch]
    computed = snp_over_checkpoints(
        plan.training_run_id, plan.settings, epochs=others, device=device, splits=plan.splits
    )
    pending = next(computed, None)
    for epoch in plan.epochs:
        if epoch == snp_epoch:
            yield epoch, ds
        elif pending is not None and pending[0] == epoch:
            yield pending
            pending = next(computed, None)
