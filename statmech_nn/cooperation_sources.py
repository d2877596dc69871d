"""What a cooperation analysis reads of an SNP run: its layers, data, features and ``D_n``.

Used by :mod:`statmech_nn.cooperation_run`: the analysed layers of a site kind, the checkpoint and
the data subsets exactly as the SNP run saw them (``Splits.limited`` with its recorded seed and
limits), the subset readouts' cached inputs of a site (``tokens`` or ``pooled``, see
:func:`feature_form`), every node's stored ``D_n`` and the readout weights of the bound.

A token-level SNP run (``readout = "token"``, methods section 10) is read as its SNP computation
read it: the samples are the kept masked positions of the training run's own masks
(:func:`statmech_nn.snp.token_runs.masked_splits`), each with its site activation (``pooled``:
one scalar per node) and the index of its true token among the ``K`` as label
(:func:`statmech_nn.snp.token_compute.position_features`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import xarray as xr

from statmech_nn import cooperation
from statmech_nn.errors import ConfigError, SchemaError
from statmech_nn.snp.tokens import TOKEN_READOUT

if TYPE_CHECKING:
    from statmech_nn.readout import Readout
    from statmech_nn.sites import Site
    from statmech_nn.studies.build import Sources

FEATURES = ("auto", "tokens", "pooled")
"""What subset readouts see: ``tokens`` (activations) or ``pooled`` (one scalar per node)."""


# -- what the SNP run analysed -------------------------------------------------------------------


def analysed_layers(ds: xr.Dataset, kind: str, layers: Sequence[int] | None) -> list[int]:
    """The ``kind`` layers of an SNP tensor to analyse (all it has by default)."""
    if f"snp_{kind}" not in ds:
        kinds = [str(v)[4:] for v in ds.data_vars if str(v).startswith("snp_")]
        raise ConfigError(f"the SNP run has no site kind {kind!r}; it has {', '.join(kinds)}")
    acc = ds[f"acc_{kind}"]
    have = [int(v) for v in ds["layer"].values if not np.isnan(float(acc.sel(layer=v)))]
    chosen = have if layers is None else sorted(int(v) for v in layers)
    missing = sorted(set(chosen) - set(have))
    if missing:
        raise ConfigError(f"the SNP run has no {kind} layers {missing}; it has {have}")
    return chosen


def snp_sources(
    ds: xr.Dataset,
    params: Mapping[str, str],
    kind: str,
    layers: list[int],
    data_root: str | os.PathLike | None = None,
) -> Sources:
    """The checkpoint, sites, readout settings and data subsets of the SNP run ``ds`` came from.

    The data are read from ``data_root`` (see :func:`~statmech_nn.data.data_for_analysis`),
    cut with ``Splits.limited`` and the SNP run's recorded seed and limits, so the train and
    evaluated samples are exactly the ones its readouts and matrices saw.
    """
    from statmech_nn import tracking
    from statmech_nn.data import data_for_analysis
    from statmech_nn.order.checkpoints import snp_settings
    from statmech_nn.readout import ReadoutConfig
    from statmech_nn.sites import resolve
    from statmech_nn.snp.token_runs import masked_splits
    from statmech_nn.studies.build import Sources

    training_run_id = str(ds.attrs.get("training_run_id") or "")
    if not training_run_id:
        raise SchemaError("the SNP tensor does not name its training run (attr training_run_id)")
    settings = snp_settings(ds, dict(params))
    ckpt = tracking.load_checkpoint(training_run_id, int(ds.attrs["checkpoint_epoch"]))
    by_key = {(s.kind, s.layer): s for s in resolve(ckpt.model, list(ds.attrs["sites"]))}
    full = data_for_analysis(ckpt.config, augment="none", data_root=data_root)
    split = settings["split"]
    limits = {"train": settings["limit_train"], split: settings["limit_eval"]}
    splits = full.limited(settings["seed"], **limits)
    config = cooperation_readout_config(ds)
    train, evaluated = splits.train, getattr(splits, split)
    num_labels = int(full.num_classes)
    if is_token_run(ds):
        train, evaluated = masked_splits(ckpt.config, full, splits, split)
        config = {**config, "readout": "mean"}  # one position per sample, W [K, N], no bias
        num_labels = len(token_ids(ds))
    return Sources(
        checkpoint=ckpt,
        sites=[by_key[(kind, layer)] for layer in layers],
        config=ReadoutConfig(**config),
        train=train,
        evaluated=evaluated,
        num_labels=num_labels,
    )


def is_token_run(ds: xr.Dataset) -> bool:
    """Whether ``ds`` is a token-level SNP tensor (labels = the ``K`` tokens, methods 10)."""
    return ds.attrs.get("readout") == TOKEN_READOUT


def token_ids(ds: xr.Dataset) -> torch.Tensor:
    """The ``K`` token ids of a token-level SNP tensor, in label order."""
    ids = np.atleast_1d(np.asarray(ds.attrs.get("token_ids", []), dtype=np.int64))
    if not len(ids):
        raise SchemaError("the token-level SNP tensor does not list its tokens (attr token_ids)")
    return torch.as_tensor(ids)


def cooperation_readout_config(ds: xr.Dataset) -> dict[str, Any]:
    """The SNP run's readout training choices (``readout_config`` attr) as keyword arguments."""
    config = json.loads(ds.attrs.get("readout_config") or "{}")
    if not config:
        raise SchemaError("the SNP tensor does not record its readout training (readout_config)")
    return dict(config)


def feature_form(readout: str, features: str) -> str:
    """``tokens`` or ``pooled``: what the subset readouts of a ``readout`` site see."""
    if readout == TOKEN_READOUT:
        if features == "tokens":
            raise ConfigError(
                "a token readout reads one masked position per sample: use --features pooled "
                "(or auto)"
            )
        return "pooled"
    if features == "auto":
        return "pooled" if readout == "mean" else "tokens"
    if features == "pooled" and readout == "flatten":
        raise ConfigError("a flatten readout reads every token: use --features tokens (or auto)")
    return features


def site_heads(site: Site, nodes: int) -> np.ndarray:
    """The head of every node of ``site``; :class:`ConfigError` for a site without heads."""
    from statmech_nn.snp import head_count

    heads = head_count(site, nodes)
    if heads is None:
        raise ConfigError(f"site {site.name} has no heads: --within-head needs an mha-like site")
    return np.arange(nodes) // (nodes // heads)


def check_sizes(sizes: Sequence[int] | None, nodes: int, heads: np.ndarray | None) -> list[int]:
    """The subset sizes (default ``1, 2, 4, ..., N``; within one head up to its size), checked."""
    largest = nodes if heads is None else int(np.unique(heads, return_counts=True)[1].max())
    if sizes is None:
        return cooperation.default_sizes(largest)
    too_big = sorted(int(s) for s in sizes if int(s) > largest)
    if too_big:
        where = "one head has" if heads is not None else "the site has"
        raise ConfigError(f"subset sizes {too_big} exceed the {largest} nodes {where}")
    return sorted(int(s) for s in sizes)


# -- features and labels -------------------------------------------------------------------------


def _inputs(batch: Any, device: torch.device) -> tuple[Any, torch.Tensor | None]:
    """A loader batch's model input on ``device`` and its padding mask (None for images)."""
    x = batch[0]
    if isinstance(x, Mapping):
        from statmech_nn.data.text import padding_mask, to_device

        moved = to_device(x, device)
        return moved, padding_mask(moved)
    return x.to(device), None


def _pooled_inputs(readout: Readout, a: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """``[B, N]``: one scalar per node, the input of ``readout``'s final linear layer."""
    from statmech_nn import text_masks
    from statmech_nn.readout import SeqPoolReadout

    if isinstance(readout, SeqPoolReadout):
        g, g0 = readout.pool.weight[0], readout.pool.bias[0]
        return text_masks.masked_seqpool(a, mask, g, g0)
    return text_masks.masked_mean(a, mask)


def site_features(
    model: torch.nn.Module,
    site: Site,
    readout: Readout,
    data: Any,
    form: str,
    batch_size: int,
    device: torch.device,
) -> cooperation.SiteFeatures:
    """The activations of one site over ``data`` as cached subset-readout inputs (one pass)."""
    from statmech_nn.readout import make_loader
    from statmech_nn.sites import ActivationCapture

    xs, masks, labels = [], [], []
    model.to(device).eval()
    readout = readout.to(device)
    with ActivationCapture(model, [site]) as capture, torch.no_grad():
        for batch in make_loader(data, batch_size):
            x, mask = _inputs(batch, device)
            a = capture(x)[site.name]
            xs.append(_pooled_inputs(readout, a, mask) if form == "pooled" else a)
            if mask is not None and form == "tokens":
                masks.append(mask)
            labels.append(torch.as_tensor(batch[1]).long().to(device))
    return cooperation.SiteFeatures(
        torch.cat(xs), torch.cat(labels), torch.cat(masks) if masks else None
    )


def token_site_features(
    model: torch.nn.Module,
    site: Site,
    data: Any,
    tokens: torch.Tensor,
    batch_size: int,
    device: torch.device,
) -> cooperation.SiteFeatures:
    """``[P, N]`` activations at the kept masked positions of MLM ``data``, labels their token."""
    from statmech_nn.snp.token_compute import position_features

    model.to(device).eval()
    features, labels = position_features(model, [site], data, tokens, batch_size, device)
    return cooperation.SiteFeatures(features[site.name], labels)


def token_readouts(
    src: Sources, tokens: torch.Tensor, device: torch.device, progress: bool = False
) -> dict[str, Readout]:
    """The token readouts of an SNP run that stored none, retrained as it trained them."""
    from statmech_nn.snp.token_compute import position_features, train_token_readouts

    model = src.checkpoint.model.to(device).eval()
    features, labels = position_features(
        model, src.sites, src.train, tokens, src.config.batch_size, device, progress
    )
    return train_token_readouts(features, labels, src.sites, len(tokens), src.config)


def stored_single_labels(ds: xr.Dataset, kind: str, layer: int, theta: float) -> np.ndarray:
    """Bool ``[N, L]``: every node's ``D_n`` from the SNP run's stored matrices (padding cut)."""
    nodes = int(ds[f"node_count_{kind}"].sel(layer=layer))
    stored = ds[f"snp_{kind}"].sel(layer=layer).values[:nodes]
    return cooperation.single_node_labels(torch.from_numpy(np.asarray(stored)), theta)


def readout_weight(readout: Readout) -> np.ndarray:
    """``W[j, n]`` (scalar node inputs) or ``W[j, n, t]`` (``flatten``) of a stored readout."""
    from statmech_nn.readout import FlattenReadout

    with torch.no_grad():
        w = readout.weight_jnt() if isinstance(readout, FlattenReadout) else readout.fc.weight
        return w.detach().to("cpu", torch.float64).numpy()
