"""Token-level SNP of an MLM pre-training run, logged as an ``snp`` child run (methods section 10).

:func:`token_for_run` is what ``statmech-nn snp RUN --readout token --tokens K`` runs (through
:func:`statmech_nn.snp.runs.compute_for_run`): checkpoint -> the run's text data seen as MLM
samples with the run's own masking -> per-position readouts -> token matrices
(:func:`statmech_nn.snp.token_compute.compute_tokens`) -> an ``snp`` child run with the artifact
``snp/snp.nc`` in the usual schema (label names are token strings, ``readout = "token"``), so
``statmech-nn order`` reads it unchanged. Masks: the training seed, split and epoch 0 of
:class:`~statmech_nn.data.mlm.MaskedTokens`; on the test split, those training evaluated on.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import xarray as xr

from statmech_nn.data.mlm import MLM_OBJECTIVE, MLM_PROBABILITY, MaskedTokens, masking_for
from statmech_nn.errors import ConfigError
from statmech_nn.naming import KIND_SNP, KIND_TAG
from statmech_nn.readout import ReadoutConfig
from statmech_nn.sites import resolve
from statmech_nn.snp.engine import SPLITS
from statmech_nn.snp.runs import (
    limited_splits,
    log_artifacts,
    provenance,
    readout_metrics,
    run_params,
)
from statmech_nn.snp.token_compute import compute_tokens
from statmech_nn.snp.tokens import TOKEN_READOUT

__all__ = ["masked_splits", "refuse_classification_run", "token_for_checkpoint", "token_for_run"]


def refuse_classification_run(run_id: str, config: Mapping[str, Any]) -> None:
    """Token-level SNP asked of a run not pre-trained as a masked language model: ConfigError."""
    if config.get("objective") != MLM_OBJECTIVE:
        objective = config.get("objective") or "classification"
        raise ConfigError(
            f"--readout token needs a run pre-trained as a masked language model (objective "
            f"mlm, e.g. --recipe mlm-cpu); run {run_id} was trained for {objective}: pass "
            "--readout seqpool, flatten or mean"
        )


def masked_splits(
    config: Mapping[str, Any], data: Any, splits: Any, split: str
) -> tuple[MaskedTokens, MaskedTokens]:
    """The train split and ``split`` as MLM samples with the training run's own masking."""
    masking = masking_for(data, float(config.get("mlm_probability", MLM_PROBABILITY)))
    mask_seed = int(config.get("seed", 0))
    train = MaskedTokens(splits.train, masking, mask_seed, "train")
    return train, MaskedTokens(getattr(splits, split), masking, mask_seed, split)


def token_for_checkpoint(
    ckpt: Any,
    splits: Any,
    settings: Mapping[str, Any],
    device: str | torch.device | None = None,
    progress: bool = False,
    attrs: Mapping[str, Any] | None = None,
) -> xr.Dataset:
    """Token-level SNP of one checkpoint with an SNP run's ``settings`` (``order`` over
    checkpoints): the same sites, K, readout training, split and masks."""
    refuse_classification_run(str(attrs.get("training_run_id", "?") if attrs else "?"), ckpt.config)
    split = str(settings["split"])
    train, evaluated = masked_splits(ckpt.config, splits, splits, split)
    config = ReadoutConfig(
        readout="mean",
        epochs=int(settings["readout_epochs"]),
        batch_size=int(settings["batch_size"]),
        seed=int(settings["seed"]),
        **dict(settings.get("readout_options") or {}),
    )
    ds, _ = compute_tokens(
        ckpt.model,
        train,
        evaluated,
        resolve(ckpt.model, settings["sites"]),
        k=int(settings["tokens"]),
        token_names=getattr(splits, "token_names", None) or None,
        config=config,
        split=split,
        device=device,
        progress=progress,
        attrs=attrs,
    )
    return ds


def token_for_run(
    run_id: str,
    epoch: int | None = None,
    sites: str | Sequence[str] = "all",
    tokens: int = 100,
    readout_epochs: int = 10,
    batch_size: int = 128,
    split: str = "test",
    seed: int = 0,
    device: str | torch.device | None = None,
    progress: bool = True,
    tracking_uri: str | None = None,
    limit_train: int | None = None,
    limit_eval: int | None = None,
    readout_options: Mapping[str, Any] | None = None,
    data_root: str | os.PathLike | None = None,
) -> tuple[str, xr.Dataset]:
    """Token-level SNP of ``run_id``'s checkpoint (``epoch`` or the last) with ``tokens`` labels.

    The child run gets the tag ``statmech_nn.kind=snp``, every choice as a param (``readout`` =
    ``token``, ``tokens``), the metrics ``acc.readout.{kind}.{block_i}`` (each site's readout
    accuracy over the K tokens at the kept masked positions), the trained readouts
    (``snp/readouts.pt`` / ``.json``: one-position ``mean`` readouts, ``fc.weight = W [K, N]``)
    and ``snp/snp.nc``, logged last, once the tensor is complete. Returns ``(child_run_id,
    dataset)``.
    """
    import mlflow

    from statmech_nn import tracking
    from statmech_nn.data import data_for_analysis

    if split not in SPLITS:
        raise ConfigError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1:
        raise ConfigError(f"--tokens must be a whole number >= 1, got {tokens!r}")
    tracking.init_store(tracking_uri)
    ckpt = tracking.load_checkpoint(run_id, epoch)
    refuse_classification_run(run_id, ckpt.config)
    site_list = resolve(ckpt.model, sites)
    data = data_for_analysis(ckpt.config, augment="none", data_root=data_root)
    splits = limited_splits(run_id, data, split, limit_train, limit_eval, seed)
    train, evaluated = masked_splits(ckpt.config, data, splits, split)
    options = dict(readout_options or {})
    config = ReadoutConfig(
        readout="mean", epochs=readout_epochs, batch_size=batch_size, seed=seed, **options
    )
    choices = dict(
        readout=TOKEN_READOUT,
        silencing="none",
        readout_epochs=readout_epochs,
        batch_size=batch_size,
        chunk_size=batch_size,
        split=split,
        seed=seed,
        checkpoint_epoch=ckpt.epoch,
        limit_train=limit_train,
        limit_eval=limit_eval,
    )
    with tracking.child_run(run_id, KIND_SNP) as active:
        child_id = active.info.run_id
        mlflow.set_tag(KIND_TAG, KIND_SNP)
        mlflow.log_params({**run_params(site_list, config, choices), "tokens": tokens})
        ds, trained = compute_tokens(
            ckpt.model,
            train,
            evaluated,
            site_list,
            k=tokens,
            token_names=getattr(data, "token_names", None) or None,
            config=config,
            split=split,
            device=device,
            progress=progress,
            attrs=provenance(ckpt, child_id, run_id),
        )
        mlflow.log_params(
            {
                "masked_positions": ds.attrs["masked_positions"],
                "left_out_positions": ds.attrs["left_out_positions"],
            }
        )
        mlflow.log_metrics(readout_metrics(ds, site_list))
        log_artifacts(ds, trained)
    return child_id, ds
