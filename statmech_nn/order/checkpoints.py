"""SNP tensors of a training run's checkpoints, with the settings of an existing SNP run.

Used for the onset of head symmetry breaking during training (METHODS.md section 6): every saved
checkpoint (epoch 0, the untrained network, included) is analysed with the same sites, readout,
silencing, readout training, split and sample limits as the SNP run the analysis started from.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import xarray as xr

from statmech_nn.data.splits import subset
from statmech_nn.errors import CheckpointError

_READOUT_FIELDS = ("lr", "momentum", "nesterov", "weight_decay", "schedule")


def _int_or_none(value: Any) -> int | None:
    if value in (None, "", "None"):
        return None
    return int(value)


def snp_settings(ds: xr.Dataset, params: dict[str, str]) -> dict[str, Any]:
    """Keyword arguments for :func:`statmech_nn.snp.compute` that reproduce ``ds``'s analysis."""
    config = json.loads(ds.attrs.get("readout_config") or "{}")
    readout = str(ds.attrs.get("readout", config.get("readout", "seqpool")))
    silencing = str(ds.attrs.get("silencing", "pre_pool"))
    return {
        "sites": list(ds.attrs.get("sites") or []) or "all",
        "readout": readout,
        "silencing": silencing if silencing in ("pre_pool", "post_pool") else "pre_pool",
        "readout_epochs": int(config.get("epochs", params.get("readout_epochs", 10))),
        "batch_size": int(config.get("batch_size", params.get("batch_size", 128))),
        "chunk_size": int(params.get("chunk_size", 128)),
        "split": str(ds.attrs.get("split", "test")),
        "seed": int(config.get("seed", params.get("seed", 0))),
        "readout_options": {k: config[k] for k in _READOUT_FIELDS if k in config},
        "limit_train": _int_or_none(params.get("limit_train")),
        "limit_eval": _int_or_none(params.get("limit_eval")),
    }


def snp_over_checkpoints(
    training_run_id: str,
    settings: dict[str, Any],
    epochs: list[int] | None = None,
    device: str | None = None,
    progress: bool = False,
) -> Iterator[tuple[int, xr.Dataset]]:
    """Yield ``(epoch, SNP dataset)`` for each checkpoint of ``training_run_id`` (ascending)."""
    from statmech_nn import snp, tracking
    from statmech_nn.data import data_for_config

    available = tracking.list_checkpoints(training_run_id)
    if not available:
        raise CheckpointError(
            f"training run {training_run_id} has no checkpoints; --over-checkpoints needs the "
            "checkpoints saved by `statmech-nn train`"
        )
    wanted = available if epochs is None else [e for e in available if e in set(epochs)]
    settings = dict(settings)
    limit_train = settings.pop("limit_train", None)
    limit_eval = settings.pop("limit_eval", None)
    splits = None
    for epoch in wanted:
        ckpt = tracking.load_checkpoint(training_run_id, epoch)
        if splits is None:
            full = data_for_config(ckpt.config, augment="none")
            split = settings["split"]
            splits = SimpleNamespace(
                train=subset(full.train, limit_train, settings["seed"]),
                val=full.val,
                test=full.test,
                classes=list(full.classes),
                num_classes=full.num_classes,
            )
            setattr(splits, split, subset(getattr(full, split), limit_eval, settings["seed"]))
        attrs = {
            "checkpoint": ckpt.path,
            "checkpoint_epoch": int(ckpt.epoch),
            "training_run_id": training_run_id,
        }
        ds = snp.compute(
            ckpt.model, splits, device=device, progress=progress, attrs=attrs, **settings
        )
        yield epoch, ds
