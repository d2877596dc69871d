"""SNP tensors of a training run's checkpoints, with the settings of an existing SNP run.

Used for the onset of head symmetry breaking during training (methods.md section 6): every saved
checkpoint (epoch 0, the untrained network, included) is analysed with the same sites, readout,
silencing, readout training, split and sample limits as the SNP run the analysis started from.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import xarray as xr

from statmech_nn.errors import CheckpointError
from statmech_nn.snp.tokens import TOKEN_READOUT

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
        **({"tokens": int(ds.attrs["token_k"])} if readout == TOKEN_READOUT else {}),
    }


def checkpoint_epochs(training_run_id: str) -> list[int]:
    """The checkpoint epochs of ``training_run_id``; :class:`CheckpointError` when it has none."""
    from statmech_nn import tracking

    available = tracking.list_checkpoints(training_run_id)
    if not available:
        raise CheckpointError(
            f"training run {training_run_id} has no checkpoints; --over-checkpoints needs the "
            "checkpoints saved by `statmech-nn train`"
        )
    return available


def checkpoint_data(
    training_run_id: str,
    settings: dict[str, Any],
    epochs: list[int],
    data_root: str | os.PathLike | None = None,
) -> Any:
    """The run's data as the SNP run saw it, after loading every checkpoint in ``epochs`` once.

    Loading them all first refuses a corrupt or foreign checkpoint (:class:`CheckpointError`)
    before anything is logged. The data are read from ``data_root`` (see
    :func:`~statmech_nn.data.data_for_analysis`).
    """
    from statmech_nn import tracking
    from statmech_nn.data import data_for_analysis

    configs = [tracking.load_checkpoint(training_run_id, epoch).config for epoch in epochs]
    config = configs[0] if configs else tracking.load_checkpoint(training_run_id).config
    full = data_for_analysis(config, augment="none", data_root=data_root)
    limits: dict[str, int | None] = {
        "train": settings.get("limit_train"),
        "val": None,
        "test": None,
    }
    limits[settings["split"]] = settings.get("limit_eval")
    return full.limited(
        settings["seed"], train=limits["train"], val=limits["val"], test=limits["test"]
    )


def snp_over_checkpoints(
    training_run_id: str,
    settings: dict[str, Any],
    epochs: list[int] | None = None,
    device: str | None = None,
    progress: bool = False,
    splits: Any = None,
    data_root: str | os.PathLike | None = None,
) -> Iterator[tuple[int, xr.Dataset]]:
    """Yield ``(epoch, SNP dataset)`` for each checkpoint of ``training_run_id`` (ascending).

    ``splits`` is :func:`checkpoint_data`'s result (built here, from ``data_root``, when not
    given).
    """
    from statmech_nn import snp, tracking
    from statmech_nn.snp.token_runs import token_for_checkpoint

    available = checkpoint_epochs(training_run_id)
    wanted = available if epochs is None else [e for e in available if e in set(epochs)]
    if splits is None:
        splits = checkpoint_data(training_run_id, settings, wanted[:1], data_root)
    settings = {k: v for k, v in settings.items() if k not in ("limit_train", "limit_eval")}
    for epoch in wanted:
        ckpt = tracking.load_checkpoint(training_run_id, epoch)
        attrs = {
            "checkpoint": ckpt.path,
            "checkpoint_epoch": int(ckpt.epoch),
            "training_run_id": training_run_id,
        }
        if settings.get("readout") == TOKEN_READOUT:
            yield epoch, token_for_checkpoint(ckpt, splits, settings, device, progress, attrs)
            continue
        ds = snp.compute(
            ckpt.model, splits, device=device, progress=progress, attrs=attrs, **settings
        )
        assert isinstance(ds, xr.Dataset)  # no readouts asked for
        yield epoch, ds
