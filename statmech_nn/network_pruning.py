"""Network-level ANDC end to end (METHODS.md section 8, the [AFCC] analogue).

Between consecutive sites the weight from node ``u`` to node ``v`` is kept iff ``D_u`` and
``D_v`` (the labels each recognises, ``M_n[l, l] > theta``) share a label; the masks come from
:func:`statmech_nn.pruning.network_masks`. :func:`prune_network` loads a training run's
checkpoint and its SNP tensor, measures test accuracy unpruned, masked, and after a short
retraining under the mask (AdamW and cross-entropy as in training; the parametrization keeps cut
weights at exactly zero), makes the masks permanent and logs an ``andc-network`` child run with
the pruned model as a training-format checkpoint. The control prunes the same number of weights
per masked layer at random (seeded draws) and is retrained the same way.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import xarray as xr
from torch import nn
from torch.utils.data import DataLoader, Dataset

from statmech_nn.data.splits import subset
from statmech_nn.errors import SchemaError, StatmechError
from statmech_nn.naming import KIND_ANDC_NETWORK as KIND
from statmech_nn.naming import KIND_TAG
from statmech_nn.pruning import (
    apply_network_masks,
    connections,
    masked_weight_fraction,
    network_masks,
    remove_network_masks,
)

METRIC_PREFIX = "andc.network."

__all__ = [
    "KIND",
    "MissingSnpSitesError",
    "RetrainSettings",
    "check_snp_sites",
    "evaluate_accuracy",
    "prune_model",
    "prune_network",
    "random_network_masks",
    "removed_weights",
    "required_sites",
    "retrain",
    "summary_lines",
]


class MissingSnpSitesError(SchemaError):
    """An SNP tensor without the site kinds or layers that network-level ANDC needs."""


@dataclass(frozen=True)
class RetrainSettings:
    """The short retraining under the mask: AdamW, cosine decay to 0 over ``epochs``."""

    epochs: int = 1
    lr: float = 1e-4
    weight_decay: float = 0.05
    batch_size: int = 64
    label_smoothing: float = 0.0
    seed: int = 0
    amp: bool = True

    def __post_init__(self) -> None:
        if self.epochs < 0:
            raise StatmechError(f"retraining epochs must be >= 0, got {self.epochs}")
        if not self.lr > 0:
            raise StatmechError(f"retraining lr must be > 0, got {self.lr}")
        if self.batch_size < 1:
            raise StatmechError(f"batch size must be >= 1, got {self.batch_size}")


# -- masks ---------------------------------------------------------------------------------------


def required_sites(model: nn.Module) -> dict[str, list[int]]:
    """``{site kind: layers}`` whose SNP matrices the model's masked connections need."""
    need: dict[str, set[int]] = {}
    for conn in connections(model):
        need.setdefault(conn.src_kind, set()).add(conn.src_layer)
        need.setdefault(conn.dst_kind, set()).add(conn.dst_layer)
    return {kind: sorted(layers) for kind, layers in need.items()}


def _has_layer(snp: xr.Dataset, kind: str, layer: int) -> bool:
    if f"snp_{kind}" not in snp or layer not in set(int(v) for v in snp["layer"].values):
        return False
    return not bool(np.isnan(snp[f"snp_{kind}"].sel(layer=layer).values).all())


def check_snp_sites(
    snp: xr.Dataset, model: nn.Module, run_id: str = "RUN_ID", snp_run_id: str = ""
) -> None:
    """Raise :class:`MissingSnpSitesError` unless ``snp`` covers :func:`required_sites`.

    The message names the ``statmech-nn snp`` command that computes what is missing.
    """
    need = required_sites(model)
    missing = [
        f"{kind} layer {layer}"
        for kind, layers in need.items()
        for layer in layers
        if not _has_layer(snp, kind, layer)
    ]
    if not missing:
        return
    have = sorted(str(v)[4:] for v in snp.data_vars if str(v).startswith("snp_"))
    which = f"SNP run {snp_run_id}" if snp_run_id else "the SNP tensor"
    raise MissingSnpSitesError(
        f"network-level ANDC needs SNP matrices of {', '.join(missing)}, but {which} has site "
        f"kinds {have}; run `statmech-nn snp {run_id} --sites {','.join(need)}` first "
        "(prune then uses the newest SNP run, or pass its id with --snp-run)"
    )


def random_network_masks(
    masks: Mapping[str, torch.Tensor], seed: int = 0
) -> dict[str, torch.Tensor]:
    """The random control: per module, as many kept ``(v, u)`` pairs as ``masks``, chosen
    uniformly (seeded), so the same number of weights is removed from every layer."""
    gen = torch.Generator().manual_seed(int(seed))
    out = {}
    for path, mask in masks.items():
        kept = int(mask.sum())
        order = torch.randperm(mask.numel(), generator=gen)
        flat = torch.zeros(mask.numel(), dtype=torch.bool)
        flat[order[:kept]] = True
        out[path] = flat.reshape(mask.shape).to(mask.device)
    return out


def removed_weights(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> dict[str, int]:
    """Weight elements each mask removes (cut ``(v, u)`` pairs times the kernel size)."""
    out = {}
    for path, mask in masks.items():
        weight = model.get_submodule(path).weight
        per_pair = int(np.prod(weight.shape[2:])) if weight.ndim > 2 else 1
        out[path] = int((~mask.bool()).sum()) * per_pair
    return out


# -- training and evaluation ---------------------------------------------------------------------


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """As in training: no weight decay on biases, norms (1-D) and the positional embedding."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 or "positional" in name else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def retrain(
    model: nn.Module,
    data: Dataset,
    settings: RetrainSettings,
    device: str | torch.device = "cpu",
    batch_transform: Any = None,
    progress: bool = False,
) -> float:
    """Train ``model`` in place for ``settings.epochs`` epochs; returns the mean training loss.

    AdamW (no decay on 1-D parameters), learning rate ``settings.lr`` decaying by a cosine to 0
    per iteration, cross-entropy with ``label_smoothing`` (soft-target cross-entropy when a
    mixup/cutmix ``batch_transform`` is given), AMP on CUDA. Seeded data order.
    """
    from statmech_nn.readout import progress_bar

    dev = torch.device(device)
    model.to(dev).train()
    gen = torch.Generator().manual_seed(settings.seed)
    torch.manual_seed(settings.seed)
    loader = DataLoader(data, batch_size=settings.batch_size, shuffle=True, generator=gen)
    if settings.epochs == 0 or len(loader) == 0:
        model.eval()
        return math.nan
    optimizer = torch.optim.AdamW(_param_groups(model, settings.weight_decay), lr=settings.lr)
    total = settings.epochs * len(loader)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1.0 + math.cos(math.pi * step / total))
    )
    use_amp = dev.type == "cuda" and settings.amp
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    loss_sum, count = 0.0, 0
    bar = progress_bar(total, "retrain", progress)
    for _ in range(settings.epochs):
        for x, y in loader:
            x, y = x.to(dev), torch.as_tensor(y).to(dev).long()
            target = None
            if batch_transform is not None:
                x, target = batch_transform(x, y)
            with torch.autocast("cuda", dtype=torch.float16, enabled=use_amp):
                logits = model(x)
            if target is not None:
                loss = torch.sum(-target * F.log_softmax(logits.float(), -1), -1).mean()
            else:
                loss = F.cross_entropy(logits.float(), y, label_smoothing=settings.label_smoothing)
            if not torch.isfinite(loss):
                raise StatmechError(
                    f"the retraining loss became non-finite ({loss.item()}); lower --lr"
                )
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            schedule.step()
            loss_sum += float(loss.detach()) * len(y)
            count += len(y)
            bar.update(1)
    bar.close()
    model.eval()
    return loss_sum / max(count, 1)


@torch.no_grad()
def evaluate_accuracy(
    model: nn.Module, data: Dataset, device: str | torch.device = "cpu", batch_size: int = 256
) -> float:
    """Top-1 accuracy of ``model`` (eval mode) on ``data``; the training mode is restored."""
    dev = torch.device(device)
    was_training = model.training
    model.to(dev).eval()
    correct = seen = 0
    for x, y in DataLoader(data, batch_size=batch_size, shuffle=False):
        y = torch.as_tensor(y).to(dev)
        correct += int((model(x.to(dev)).argmax(-1) == y).sum())
        seen += len(y)
    model.train(was_training)
    return correct / max(seen, 1)


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


# -- end to end ----------------------------------------------------------------------------------


def _snp_for_run(run_id: str, snp_run_id: str | None, uri: str) -> tuple[xr.Dataset, str]:
    from statmech_nn import snp as snp_mod

    ds = snp_mod.load_from_run(snp_run_id or run_id, tracking_uri=uri)
    owner = str(ds.attrs.get("training_run_id") or "")
    if snp_run_id is not None and owner and owner != run_id:
        raise StatmechError(
            f"SNP run {snp_run_id} analyses training run {owner}, not {run_id}; pass an SNP run "
            f"of {run_id} (or none, to use its newest)"
        )
    return ds, str(ds.attrs.get("mlflow_run_id") or snp_run_id or "")


def prune_network(
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
) -> tuple[str, dict[str, Any]]:
    """Network-level ANDC of training run ``run_id``, logged as an ``andc-network`` child run.

    Uses the SNP tensor of ``snp_run_id`` (default: the run's newest SNP run) and the training
    checkpoint it analysed. ``lr`` defaults to a tenth of the training learning rate,
    ``weight_decay`` and ``batch_size`` to the training ones; the test split (and any
    ``limit_train`` / ``limit_eval`` subset) is the training run's. ``random_draws`` seeded
    random controls (``seed + 1 + d``) are pruned and retrained the same way (0 skips them).
    The child run (tag ``statmech_nn.kind=andc-network``) gets the settings as params, metrics
    ``andc.network.{removed_fraction, acc_before, acc_pruned, acc_retrained, random_acc_pruned,
    random_acc_retrained}`` and the pruned model as checkpoint ``checkpoints/epoch_{epochs}``
    (load it with ``tracking.load_checkpoint(child_run_id)``). Returns ``(child_run_id, result)``.
    """
    import mlflow

    from statmech_nn import tracking
    from statmech_nn.naming import check_theta
    from statmech_nn.readout import resolve_device
    from statmech_nn.train import CHECKPOINT_FORMAT, data_for_config

    theta = check_theta(theta)
    if random_draws < 0:
        raise StatmechError(f"random_draws must be >= 0, got {random_draws}")
    uri = tracking.init_store(tracking_uri)
    tracking.get_run(run_id)
    ds, snp_id = _snp_for_run(run_id, snp_run_id, uri)
    epoch = int(ds.attrs.get("checkpoint_epoch", -1))
    ckpt = tracking.load_checkpoint(run_id, epoch if epoch >= 0 else None)
    check_snp_sites(ds, ckpt.model, run_id, snp_id)
    masks = network_masks(ds, ckpt.model, theta)

    config = ckpt.config
    settings = RetrainSettings(
        epochs=int(epochs),
        lr=float(lr) if lr is not None else 0.1 * float(config.get("lr", 1e-3)),
        weight_decay=float(
            weight_decay if weight_decay is not None else config.get("weight_decay", 0.0)
        ),
        batch_size=int(batch_size or config.get("batch_size", 64)),
        label_smoothing=float(config.get("label_smoothing") or 0.0),
        seed=int(seed),
        amp=bool(config.get("amp", True)),
    )
    dev = resolve_device(device)
    splits = data_for_config(config, augment=str(config.get("augment") or "none"))
    data_seed = int(config.get("seed", 0))
    train_data = subset(splits.train, config.get("limit_train"), data_seed)
    test_data = subset(splits.test, config.get("limit_eval"), data_seed + 2)
    transform = getattr(splits, "batch_transform", None)

    with tracking.child_run(run_id, KIND) as active:
        child_id = active.info.run_id
        mlflow.set_tag(KIND_TAG, KIND)
        mlflow.log_params(
            {
                "theta": theta,
                **{k: v for k, v in asdict(settings).items()},
                "random_draws": random_draws,
                "snp_run_id": snp_id,
                "checkpoint_epoch": ckpt.epoch,
                "device": str(dev),
            }
        )
        model = ckpt.model
        pristine = copy.deepcopy(model) if random_draws else None
        acc_before = evaluate_accuracy(model, test_data, dev)
        andc = prune_model(model, masks, train_data, test_data, settings, dev, transform, progress)
        controls = []
        for d in range(random_draws):
            twin = copy.deepcopy(pristine)
            rmasks = random_network_masks(masks, seed + 1 + d)
            controls.append(
                prune_model(twin, rmasks, train_data, test_data, settings, dev, transform)
            )
        removed = removed_weights(model, masks)
        result: dict[str, Any] = {
            "child_run_id": child_id,
            "run_id": run_id,
            "snp_run_id": snp_id,
            "checkpoint_epoch": ckpt.epoch,
            "theta": theta,
            "removed_fraction": andc["removed_fraction"],
            "removed_weights": removed,
            "acc_before": acc_before,
            "acc_pruned": andc["acc_pruned"],
            "acc_retrained": andc["acc_retrained"],
        }
        if controls:
            for key in ("acc_pruned", "acc_retrained"):
                values = np.array([c[key] for c in controls])
                result[f"random_{key}"] = float(values.mean())
                result[f"random_{key}_std"] = float(values.std())
        metrics = {
            METRIC_PREFIX + k: float(v)
            for k, v in result.items()
            if k.startswith(("removed_fraction", "acc_", "random_acc_"))
        }
        mlflow.log_metrics(metrics)
        state = {
            "format": CHECKPOINT_FORMAT,
            "epoch": settings.epochs,
            "model": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
            "model_config": ckpt.model_config,
            "config": {
                **config,
                "andc_network": {
                    "parent_run_id": run_id,
                    "parent_epoch": ckpt.epoch,
                    "snp_run_id": snp_id,
                    "theta": theta,
                    **asdict(settings),
                },
            },
            "masks": {p: m.detach().cpu().bool() for p, m in masks.items()},
            "metrics": {k: float(v) for k, v in metrics.items()},
        }
        tracking.log_checkpoint(child_id, state, settings.epochs)
    return child_id, result


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
