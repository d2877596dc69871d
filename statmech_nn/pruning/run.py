"""Network-level ANDC of a training run end to end (docs/methods.md section 8, the [AFCC] analogue).

:func:`prune_network` (also :func:`for_run`) loads a training run's checkpoint and its SNP
tensor, measures test accuracy unpruned, masked, and after a short retraining under the mask
(AdamW and cross-entropy as in training; the parametrization keeps cut weights at exactly zero),
makes the masks permanent and logs an ``andc-network`` child run with the pruned model as a
training-format checkpoint. The control prunes the same number of weights per masked layer at
random (seeded draws) and is retrained the same way.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr

from statmech_nn.errors import ConfigError, StatmechError
from statmech_nn.naming import KIND_ANDC_NETWORK, KIND_TAG, check_theta
from statmech_nn.pruning.network import (
    apply_network_masks,
    check_snp_sites,
    masked_weight_fraction,
    network_masks,
    random_network_masks,
    remove_network_masks,
    removed_weights,
)
from statmech_nn.pruning.retrain import RetrainSettings, evaluate_accuracy, retrain

if TYPE_CHECKING:
    import torch
    from torch import nn
    from torch.utils.data import Dataset

    from statmech_nn.tracking import LoadedCheckpoint

KIND = KIND_ANDC_NETWORK
METRIC_PREFIX = "andc.network."
METRIC_KEYS = ("removed_fraction", "acc_", "random_acc_")


def prune_model(
    model: nn.Module,
    masks: Mapping[str, torch.Tensor],
    train_data: Dataset,
    test_data: Dataset,
    settings: RetrainSettings,
    device: str | torch.device = "cpu",
    batch_transform: Any = None,
    progress: bool = False,
) -> dict[str, float]:
    """Mask ``model`` in place, measure, retrain under the mask, measure, make it permanent.

    Returns ``acc_pruned`` (masked, before retraining), ``acc_retrained``, ``train_loss`` and
    ``removed_fraction`` (of the masked modules' weight elements). Afterwards the model holds
    plain weights with the cut ones exactly zero.
    """
    import torch

    apply_network_masks(model, {p: m.to(torch.device(device)) for p, m in masks.items()})
    try:
        fraction = masked_weight_fraction(model, masks)
        acc_pruned = evaluate_accuracy(model, test_data, device)
        loss = retrain(model, train_data, settings, device, batch_transform, progress)
        acc_retrained = evaluate_accuracy(model, test_data, device)
    finally:
        remove_network_masks(model, permanent=True)
    return {
        "acc_pruned": acc_pruned,
        "acc_retrained": acc_retrained,
        "train_loss": loss,
        "removed_fraction": fraction,
    }


# -- the steps of prune_network ------------------------------------------------------------------


@dataclass
class PruneInputs:
    """What network-level ANDC of one training run starts from."""

    snp: xr.Dataset
    snp_run_id: str
    checkpoint: LoadedCheckpoint
    masks: dict[str, torch.Tensor]


@dataclass
class PruneData:
    """The training run's own training and test data (its subsets), and its batch transform."""

    train: Dataset
    test: Dataset
    transform: Any = None


def _snp_for_run(run_id: str, snp_run_id: str | None, uri: str) -> tuple[xr.Dataset, str]:
    """The SNP tensor of ``snp_run_id`` (default: ``run_id``'s newest) and its SNP run id."""
    from statmech_nn import snp as snp_mod

    ds = snp_mod.load_from_run(snp_run_id or run_id, tracking_uri=uri)
    owner = str(ds.attrs.get("training_run_id") or "")
    if snp_run_id is not None and owner and owner != run_id:
        raise StatmechError(
            f"SNP run {snp_run_id} analyses training run {owner}, not {run_id}; pass an SNP run "
            f"of {run_id} (or none, to use its newest)"
        )
    return ds, str(ds.attrs.get("mlflow_run_id") or snp_run_id or "")


def load_inputs(run_id: str, snp_run_id: str | None, theta: float, uri: str) -> PruneInputs:
    """The SNP tensor, the checkpoint it analysed and the network masks at ``theta``."""
    from statmech_nn import tracking

    tracking.get_run(run_id)
    ds, snp_id = _snp_for_run(run_id, snp_run_id, uri)
    epoch = int(ds.attrs.get("checkpoint_epoch", -1))
    ckpt = tracking.load_checkpoint(run_id, epoch if epoch >= 0 else None)
    check_snp_sites(ds, ckpt.model, run_id, snp_id)
    return PruneInputs(ds, snp_id, ckpt, network_masks(ds, ckpt.model, theta))


def settings_for(
    config: Mapping[str, Any],
    epochs: int,
    lr: float | None,
    weight_decay: float | None,
    batch_size: int | None,
    seed: int,
) -> RetrainSettings:
    """Retraining settings: the given ones, else a tenth of the training lr and its other values."""
    if weight_decay is None:
        weight_decay = config.get("weight_decay", 0.0)
    return RetrainSettings(
        epochs=int(epochs),
        lr=float(lr) if lr is not None else 0.1 * float(config.get("lr", 1e-3)),
        weight_decay=float(weight_decay),
        batch_size=int(batch_size or config.get("batch_size", 64)),
        label_smoothing=float(config.get("label_smoothing") or 0.0),
        seed=int(seed),
        amp=bool(config.get("amp", True)),
    )


def data_for(config: Mapping[str, Any], data_root: str | os.PathLike | None = None) -> PruneData:
    """The training run's data (from ``data_root``): its augmentation and its limits."""
    from statmech_nn.data import data_for_analysis

    augment = str(config.get("augment") or "none")
    splits = data_for_analysis(config, augment=augment, data_root=data_root)
    data_seed = int(config.get("seed", 0))
    cut = splits.limited(
        data_seed,
        train=config.get("limit_train"),
        test=config.get("limit_eval"),
        training_seeds=True,
    )
    return PruneData(
        train=cut.train,
        test=cut.test,
        transform=getattr(splits, "batch_transform", None),
    )


def run_params(
    theta: float, settings: RetrainSettings, random_draws: int, inputs: PruneInputs, device: Any
) -> dict[str, Any]:
    """The child run's params."""
    return {
        "theta": theta,
        **asdict(settings),
        "random_draws": random_draws,
        "snp_run_id": inputs.snp_run_id,
        "checkpoint_epoch": inputs.checkpoint.epoch,
        "device": str(device),
    }


def random_controls(
    pristine: nn.Module,
    masks: Mapping[str, torch.Tensor],
    draws: int,
    seed: int,
    data: PruneData,
    settings: RetrainSettings,
    device: Any,
) -> list[dict[str, float]]:
    """``draws`` copies of the unpruned model pruned at random (seeds ``seed + 1 + d``)."""
    out = []
    for d in range(draws):
        twin = copy.deepcopy(pristine)
        rmasks = random_network_masks(masks, seed + 1 + d)
        out.append(
            prune_model(twin, rmasks, data.train, data.test, settings, device, data.transform)
        )
    return out


def control_summary(controls: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Mean and standard deviation over the random controls (nothing without controls)."""
    out: dict[str, float] = {}
    if controls:
        for key in ("acc_pruned", "acc_retrained"):
            values = np.array([c[key] for c in controls])
            out[f"random_{key}"] = float(values.mean())
            out[f"random_{key}_std"] = float(values.std())
    return out


def run_result(
    run_id: str,
    inputs: PruneInputs,
    theta: float,
    model: nn.Module,
    acc_before: float,
    andc: Mapping[str, float],
    controls: Sequence[Mapping[str, float]],
) -> dict[str, Any]:
    """What :func:`for_run` returns (less the child run id): fraction, removals, accuracies."""
    return {
        "run_id": run_id,
        "snp_run_id": inputs.snp_run_id,
        "checkpoint_epoch": inputs.checkpoint.epoch,
        "theta": theta,
        "removed_fraction": andc["removed_fraction"],
        "removed_weights": removed_weights(model, inputs.masks),
        "acc_before": acc_before,
        "acc_pruned": andc["acc_pruned"],
        "acc_retrained": andc["acc_retrained"],
        **control_summary(controls),
    }


def run_metrics(result: Mapping[str, Any]) -> dict[str, float]:
    """``andc.network.*`` metrics of a result: the fraction and every accuracy."""
    return {METRIC_PREFIX + k: float(v) for k, v in result.items() if k.startswith(METRIC_KEYS)}


def pruned_checkpoint(
    model: nn.Module,
    inputs: PruneInputs,
    run_id: str,
    theta: float,
    settings: RetrainSettings,
    metrics: Mapping[str, float],
) -> dict[str, Any]:
    """The pruned model as a checkpoint of training's own layout, with its masks and provenance."""
    from statmech_nn.train import model_state

    ckpt = inputs.checkpoint
    provenance = {
        "parent_run_id": run_id,
        "parent_epoch": ckpt.epoch,
        "snp_run_id": inputs.snp_run_id,
        "theta": theta,
        **asdict(settings),
    }
    return model_state(
        settings.epochs,
        model,
        ckpt.model_config,
        {**ckpt.config, "andc_network": provenance},
        metrics,
        masks={p: m.detach().cpu().bool() for p, m in inputs.masks.items()},
    )


# -- end to end ----------------------------------------------------------------------------------


def for_run(
    run_id: str,
    theta: float = 0.3,
    epochs: int = 1,
    lr: float | None = None,
    snp_run_id: str | None = None,
    device: str | None = None,
    weight_decay: float | None = None,
    batch_size: int | None = None,
    seed: int = 0,
    random_draws: int = 1,
    tracking_uri: str | None = None,
    progress: bool = False,
    data_root: str | os.PathLike | None = None,
) -> tuple[str, dict[str, Any]]:
    """Network-level ANDC of training run ``run_id``, logged as an ``andc-network`` child run.

    Uses the SNP tensor of ``snp_run_id`` (default: the run's newest SNP run), the training
    checkpoint it analysed and the data under ``data_root`` (see
    :func:`~statmech_nn.data.data_for_analysis`). ``lr`` defaults to a tenth of the training
    learning rate, ``weight_decay`` and ``batch_size`` to the training ones; the test split (and any
    ``limit_train`` / ``limit_eval`` subset) is the training run's. ``random_draws`` seeded
    random controls (``seed + 1 + d``) are pruned and retrained the same way (0 skips them).
    The child run (tag ``statmech_nn.kind=andc-network``) gets the settings as params, metrics
    ``andc.network.{removed_fraction, acc_before, acc_pruned, acc_retrained, random_acc_pruned,
    random_acc_retrained}`` and the pruned model as checkpoint ``checkpoints/epoch_{epochs}``
    (load it with ``tracking.load_checkpoint(child_run_id)``). Returns ``(child_run_id, result)``.
    """
    import mlflow

    from statmech_nn import tracking
    from statmech_nn.readout import resolve_device

    theta = check_theta(theta)
    if random_draws < 0:
        raise ConfigError(f"random_draws must be >= 0, got {random_draws}")
    inputs = load_inputs(run_id, snp_run_id, theta, tracking.init_store(tracking_uri))
    config = inputs.checkpoint.config
    settings = settings_for(config, epochs, lr, weight_decay, batch_size, seed)
    dev = resolve_device(device)
    data = data_for(config, data_root)
    with tracking.child_run(run_id, KIND) as active:
        child_id = active.info.run_id
        mlflow.set_tag(KIND_TAG, KIND)
        mlflow.log_params(run_params(theta, settings, random_draws, inputs, dev))
        model = inputs.checkpoint.model
        pristine = copy.deepcopy(model) if random_draws else None
        acc_before = evaluate_accuracy(model, data.test, dev)
        andc = prune_model(
            model, inputs.masks, data.train, data.test, settings, dev, data.transform, progress
        )
        controls = (
            random_controls(pristine, inputs.masks, random_draws, seed, data, settings, dev)
            if pristine is not None
            else []
        )
        result = {
            "child_run_id": child_id,
            **run_result(run_id, inputs, theta, model, acc_before, andc, controls),
        }
        metrics = run_metrics(result)
        mlflow.log_metrics(metrics)
        state = pruned_checkpoint(model, inputs, run_id, theta, settings, metrics)
        tracking.log_checkpoint(child_id, state, settings.epochs)
    return child_id, result


prune_network = for_run
"""The name of :func:`for_run` that ``statmech-nn prune`` and the README use."""


def summary_lines(result: Mapping[str, Any]) -> Sequence[str]:
    """A few human-readable lines for the CLI."""
    lines = [
        f"network-level ANDC of run {result['run_id']} (SNP run {result['snp_run_id']}, "
        f"theta={result['theta']:g})",
        f"removed {result['removed_fraction']:.1%} of the masked weights "
        f"({sum(result['removed_weights'].values())} weights in "
        f"{len(result['removed_weights'])} layers)",
        f"accuracy: before {result['acc_before']:.4f}, pruned {result['acc_pruned']:.4f}, "
        f"retrained {result['acc_retrained']:.4f}",
    ]
    if "random_acc_pruned" in result:
        lines.append(
            f"random control (same count per layer): pruned {result['random_acc_pruned']:.4f}, "
            f"retrained {result['random_acc_retrained']:.4f}"
        )
    return lines
