"""SNR and error against the number of labels K (docs/methods.md section 7, [Universal]).

For each K, several seeded random K-label subsets are drawn; the samples of those labels are
relabelled ``0..K-1`` (in ascending original label order), a readout of one site of the frozen
network is trained on the subset's train split and its single-node matrices are computed on the
subset's test split with :func:`statmech_nn.snp.compute`. Error (1 - readout accuracy), SNR and
mean cluster size per (K, draw) are then fitted linearly in K with ``scipy.stats.linregress``
over all (K, draw) points with finite values.
"""

from __future__ import annotations

import copy
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
from torch.utils.data import Dataset

from statmech_nn.errors import ConfigError
from statmech_nn.naming import KIND_SCALING, KIND_TAG

FITTED = ("error", "snr", "cluster_size")


class ScalingError(ConfigError):
    """Label counts or draws that a scaling analysis cannot use."""


def check_ks(ks: Sequence[int], n_labels: int) -> list[int]:
    """Sorted distinct K values; :class:`ScalingError` if empty, < 2 or > ``n_labels``."""
    ks = sorted({int(k) for k in ks})
    if not ks:
        raise ScalingError("the list of label counts K is empty; pass e.g. --labels 2,4,6,8,10")
    if ks[0] < 2:
        raise ScalingError(f"K = {ks[0]} is too small: a readout needs at least 2 labels")
    if ks[-1] > n_labels:
        raise ScalingError(
            f"K = {ks[-1]} is larger than the number of labels of the data ({n_labels}); "
            f"use K values between 2 and {n_labels}"
        )
    return ks


def check_draws(draws: int) -> int:
    """``draws`` if it is at least 1, else :class:`ScalingError`."""
    if int(draws) < 1:
        raise ScalingError(f"--draws must be >= 1, got {draws}")
    return int(draws)


def parse_ks(text: str) -> list[int]:
    """``"2,4,6"`` -> ``[2, 4, 6]``; :class:`ScalingError` for an empty or malformed list."""
    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    if not parts:
        raise ScalingError("the list of label counts K is empty; pass e.g. --labels 2,4,6,8,10")
    try:
        return [int(p) for p in parts]
    except ValueError as exc:
        raise ScalingError(f"--labels must be comma-separated integers, got {text!r}") from exc


def label_subsets(n_labels: int, ks: Sequence[int], draws: int, seed: int = 0) -> xr.DataArray:
    """Seeded random label subsets: ``(K, draw, slot)`` ints, sorted, padded with -1.

    Subset ``(K, d)`` depends only on ``(seed, K, d)``, so adding K values or draws does not
    change the others.
    """
    check_draws(draws)
    ks = check_ks(ks, n_labels)
    out = np.full((len(ks), draws, ks[-1]), -1, dtype=np.int64)
    for i, k in enumerate(ks):
        for d in range(draws):
            rng = np.random.default_rng([seed, k, d])
            out[i, d, :k] = np.sort(rng.choice(n_labels, size=k, replace=False))
    return xr.DataArray(
        out, dims=("K", "draw", "slot"), coords={"K": ks, "draw": np.arange(draws)}, name="labels"
    )


class LabelSubset(Dataset):
    """The samples of ``dataset`` whose label is in ``labels``, relabelled to ``0..K-1``."""

    def __init__(self, dataset: Any, labels: Iterable[int]) -> None:
        self.dataset = dataset
        self.mapping = {int(l): i for i, l in enumerate(sorted(int(x) for x in labels))}
        targets = getattr(dataset, "targets", None)
        if targets is None:
            targets = [int(dataset[i][1]) for i in range(len(dataset))]
        self.indices = [i for i, t in enumerate(targets) if int(t) in self.mapping]
        self.targets = [self.mapping[int(targets[i])] for i in self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int):
        image, _ = self.dataset[self.indices[index]]
        return image, self.targets[index]


def subset_splits(splits: Any, labels: Iterable[int], split: str = "test") -> Any:
    """A copy of ``splits`` cut to ``labels`` (train and ``split``), relabelled ``0..K-1``."""
    labels = sorted(int(x) for x in labels)
    classes = list(getattr(splits, "classes", [str(i) for i in range(max(labels) + 1)]))
    out = copy.copy(splits)
    out.train = LabelSubset(splits.train, labels)
    setattr(out, split, LabelSubset(getattr(splits, split), labels))
    out.classes = [str(classes[l]) for l in labels]
    out.num_classes = len(labels)
    if len(out.train) == 0 or len(getattr(out, split)) == 0:
        raise ScalingError(f"labels {labels} have no samples in the train or {split} split")
    return out


def fit(values: xr.DataArray) -> dict[str, float]:
    """Linear fit of ``values (K, draw)`` against K over all finite points.

    Returns slope, intercept, r2 (``rvalue**2``), pvalue and stderr; NaN when fewer than two
    distinct K carry finite values.
    """
    from scipy.stats import linregress

    k = np.broadcast_to(values["K"].values[:, None], values.shape).astype(float).ravel()
    y = values.values.astype(float).ravel()
    keep = np.isfinite(y)
    if len(np.unique(k[keep])) < 2:
        return dict.fromkeys(("slope", "intercept", "r2", "pvalue", "stderr"), float("nan"))
    res = linregress(k[keep], y[keep])
    return {
        "slope": float(res.slope),
        "intercept": float(res.intercept),
        "r2": float(res.rvalue**2),
        "pvalue": float(res.pvalue),
        "stderr": float(res.stderr),
    }


def with_fits(result: xr.Dataset, names: Sequence[str] = FITTED) -> xr.Dataset:
    """``result`` with scalar variables ``{name}_{slope,intercept,r2,pvalue,stderr}`` added."""
    out = result.copy()
    for name in names:
        if name in out:
            for key, value in fit(out[name]).items():
                out[f"{name}_{key}"] = value
    return out


def default_site(model: Any) -> str:
    """The last ``ff`` site of ``model`` (else its last site)."""
    from statmech_nn.sites import resolve

    sites = resolve(model, "all")
    if not sites:
        raise ScalingError("the model exposes no sites; pass --site")
    ff = [s for s in sites if s.kind == "ff"]
    return max(ff or sites, key=lambda s: s.layer).name


def scaling(
    model: Any,
    splits: Any,
    ks: Sequence[int],
    draws: int = 3,
    site: str | None = None,
    seed: int = 0,
    theta: float = 0.3,
    snr_variant: str = "labels",
    snp_options: Mapping[str, Any] | None = None,
) -> xr.Dataset:
    """Error, SNR and cluster size of one site's readout on random K-label subsets.

    Returns a Dataset with ``error``, ``accuracy``, ``snr``, ``cluster_size``, ``signal``,
    ``noise`` of dims ``(K, draw)``, ``labels (K, draw, slot)`` and the linear fits of
    ``error``, ``snr`` and ``cluster_size`` (see :func:`with_fits`). ``snp_options`` are passed
    to :func:`statmech_nn.snp.compute` (readout, silencing, readout_epochs, batch_size, ...).
    """
    from statmech_nn import order, snp

    theta = order.check_theta(theta)
    if snr_variant not in order.SNR_VARIANTS:
        raise ScalingError(f"unknown SNR variant {snr_variant!r}; use {order.SNR_VARIANTS}")
    subsets = label_subsets(int(splits.num_classes), ks, draws, seed)
    site = site or default_site(model)
    options = {"progress": False, **dict(snp_options or {})}
    split = options.get("split", "test")
    shape = (subsets.sizes["K"], draws)
    values = {name: np.full(shape, np.nan) for name in ("accuracy", "snr", "cluster_size")}
    values.update(signal=np.full(shape, np.nan), noise=np.full(shape, np.nan))
    kind = None
    for i, k in enumerate(subsets["K"].values):
        for d in range(draws):
            labels = subsets.values[i, d, :k]
            ds = snp.compute(model, subset_splits(splits, labels, split), sites=[site], **options)
            assert isinstance(ds, xr.Dataset)  # no readouts asked for
            kind = order.kinds(ds)[0]
            st = order.site_statistics(ds, kind, theta)
            values["accuracy"][i, d] = float(ds[f"acc_{kind}"].values[0])
            values["snr"][i, d] = float(st[f"snr_{snr_variant}"].values[0])
            values["cluster_size"][i, d] = float(st["cluster_size"].values[0])
            values["signal"][i, d] = float(st["signal_clustered"].values[0])
            values["noise"][i, d] = float(st["noise_clustered"].values[0])
    result = xr.Dataset(
        {name: (("K", "draw"), v) for name, v in values.items()},
        coords={"K": subsets["K"].values, "draw": np.arange(draws)},
    )
    result["error"] = 1.0 - result["accuracy"]
    result["labels"] = subsets
    result.attrs = {
        "site": site,
        "kind": kind or "",
        "theta": theta,
        "snr_variant": snr_variant,
        "seed": int(seed),
        "fit": "scipy.stats.linregress over all (K, draw) points with finite values",
    }
    return with_fits(result)


def for_run(
    run_id: str,
    ks: Sequence[int],
    draws: int = 3,
    site: str | None = None,
    epoch: int | None = None,
    theta: float = 0.3,
    snr_variant: str = "labels",
    seed: int = 0,
    limit_train: int | None = None,
    snp_options: Mapping[str, Any] | None = None,
    tracking_uri: str | None = None,
    data_root: str | os.PathLike | None = None,
) -> tuple[str, xr.Dataset]:
    """Run the scaling analysis on a training run's checkpoint, logged as a ``scaling`` child.

    The data are read from ``data_root`` (see :func:`~statmech_nn.data.data_for_analysis`).
    Everything is checked before the child run is created. Returns ``(child_run_id, result)``
    with ``result`` from :func:`scaling`.
    """
    from statmech_nn import tracking
    from statmech_nn.order.runs import training_run_of

    check_options(ks, draws, theta, snr_variant)
    tracking.init_store(tracking_uri)
    training = training_run_of(run_id)
    ckpt = tracking.load_checkpoint(training, epoch)
    splits = _checked_data(ckpt, ks, site, seed, limit_train, data_root)
    options = {"seed": seed, **dict(snp_options or {})}
    with tracking.run(
        None, run_name="scaling", parent_run_id=training, tags={KIND_TAG: KIND_SCALING}
    ) as active:
        result = scaling(ckpt.model, splits, ks, draws, site, seed, theta, snr_variant, options)
        params = {"checkpoint_epoch": ckpt.epoch, "limit_train": limit_train}
        _log_result(result, draws, options, params)
    return active.info.run_id, result


def check_options(ks: Sequence[int], draws: int, theta: float, snr_variant: str) -> None:
    """Refuse (one :class:`ConfigError`) what :func:`scaling` could not use, before any run."""
    from statmech_nn.naming import check_theta
    from statmech_nn.order import SNR_VARIANTS

    check_theta(theta)
    check_draws(draws)
    parse_ks(",".join(str(k) for k in ks))
    if snr_variant not in SNR_VARIANTS:
        raise ScalingError(f"unknown SNR variant {snr_variant!r}; use {SNR_VARIANTS}")


def _checked_data(
    ckpt: Any,
    ks: Sequence[int],
    site: str | None,
    seed: int,
    limit_train: int | None,
    data_root: str | os.PathLike | None = None,
) -> Any:
    """The run's data without augmentation (train cut to ``limit_train``), checked against K."""
    from statmech_nn.data import data_for_analysis
    from statmech_nn.sites import resolve

    splits = data_for_analysis(ckpt.config, augment="none", data_root=data_root)
    check_ks(ks, int(splits.num_classes))
    resolve(ckpt.model, [site or default_site(ckpt.model)])
    return splits.limited(seed, train=limit_train)


def _log_result(
    result: xr.Dataset, draws: int, options: Mapping[str, Any], extra: Mapping[str, Any]
) -> None:
    """Params, per-K metrics (step = K), the fits, ``scaling/scaling.nc`` and its figure."""
    import mlflow

    from statmech_nn import figures

    mlflow.log_params(
        {
            "site": result.attrs["site"],
            "labels": ",".join(str(int(k)) for k in result["K"].values),
            "draws": draws,
            "theta": result.attrs["theta"],
            "snr": result.attrs["snr_variant"],
            "seed": result.attrs["seed"],
            **extra,
            **{f"snp_{k}": v for k, v in options.items() if k != "seed"},
        }
    )
    for i, k in enumerate(result["K"].values):
        step = {f"scaling.{name}": float(result[name].isel(K=i).mean()) for name in FITTED}
        mlflow.log_metrics({k_: v for k_, v in step.items() if v == v}, step=int(k))
    fits = {
        f"scaling.{name}.{key}": float(result[f"{name}_{key}"])
        for name in FITTED
        for key in ("slope", "intercept", "r2")
    }
    mlflow.log_metrics({k: v for k, v in fits.items() if v == v})
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "scaling.nc"
        result.to_netcdf(path, engine="h5netcdf")
        mlflow.log_artifact(str(path), artifact_path="scaling")
        fig = figures.scaling_curves(result, Path(tmp) / "scaling.png")
        mlflow.log_artifact(str(fig), artifact_path="figures")
