"""Token-level SNP of a masked-language model: readouts per masked position, then the matrices.

docs/methods.md section 10 ([NLP-SSB]). The data are MLM samples (``(masked inputs, targets
[T])``, :class:`statmech_nn.data.mlm.MaskedTokens`); a masked position is one whose target is not
``IGNORE_INDEX``. The labels are the ``K`` most frequent true tokens at the masked positions of
the evaluated split (:func:`~statmech_nn.snp.tokens.top_tokens`). As in phase 2 (section 3), each
site gets a fresh bias-free linear readout ``W [K, N]``, trained on the frozen network (eval mode)
at the masked positions of the training split whose true token is among the ``K``, each position
a sample with its own activation ``a[p, :]`` (no pooling): cross-entropy, SGD with Nesterov
momentum, weight decay and a cosine schedule per step (:class:`~statmech_nn.readout.ReadoutConfig`
values), the initialisation of :func:`~statmech_nn.readout.make_readout` seeded by ``(seed,
site)``, one backbone pass gathering the positions, all sites trained together. The matrices
then stream over the evaluated split (:class:`~statmech_nn.snp.tokens.TokenSums`). The
pre-trained MLM decoder is not the readout: it reads the last block only, through a non-linear
transform (dense, GELU, layer norm), so ``W[j, n] a[p, n]`` is not a field it sends.

Pure: a model and datasets in, a Dataset out; no MLflow, no files.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import xarray as xr
from torch import nn
from torch.utils.data import DataLoader, Dataset

from statmech_nn.batches import split_batch
from statmech_nn.data.mlm import IGNORE_INDEX
from statmech_nn.errors import ConfigError
from statmech_nn.readout import (
    Readout,
    ReadoutConfig,
    make_readout,
    progress_bar,
    resolve_device,
)
from statmech_nn.readout.fit import batches_per_epoch, fit_step, shuffled_rows
from statmech_nn.sites import ActivationCapture, Site
from statmech_nn.snp.engine import SiteMatrices, head_count
from statmech_nn.snp.tokens import TOKEN_READOUT, TokenSums, token_dataset, top_tokens
from statmech_nn.train.steps import label_loss

__all__ = [
    "compute_tokens",
    "masked_targets",
    "position_features",
    "token_matrices",
    "train_token_readouts",
]


def _loader(data: Dataset, batch_size: int) -> DataLoader:
    return DataLoader(data, batch_size=batch_size, shuffle=False)


def masked_targets(data: Dataset, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """``(masked bool [S, T], targets [S, T])`` of MLM samples, without running any model."""
    masked, targets = [], []
    for _, y in _loader(data, batch_size):
        y = torch.as_tensor(y).long()
        masked.append(y != IGNORE_INDEX)
        targets.append(y.clamp(min=0))
    if not masked:
        raise ConfigError("the MLM data hold no sample")
    return torch.cat(masked), torch.cat(targets)


def _label_index(tokens: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """The label (index into ``tokens``) of each token id, -1 for ids not among them."""
    match = ids[:, None] == tokens[None, :].to(ids.device)
    return torch.where(match.any(1), match.int().argmax(1), torch.full_like(ids, -1))


@torch.no_grad()
def position_features(
    model: nn.Module,
    sites: Sequence[Site],
    data: Dataset,
    tokens: torch.Tensor,
    batch_size: int,
    device: torch.device,
    progress: bool = False,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """``({site: a [P, N]}, labels [P])`` at the masked positions whose true token is a label."""
    features: dict[str, list[torch.Tensor]] = {s.name: [] for s in sites}
    labels: list[torch.Tensor] = []
    loader = _loader(data, batch_size)
    bar = progress_bar(len(loader), "token positions", progress)
    with ActivationCapture(model, sites) as capture:
        for batch in loader:
            x, y = split_batch(batch, device)
            masked = y != IGNORE_INDEX
            label = _label_index(tokens, y[masked])
            keep = label >= 0
            acts = capture(x)
            for site in sites:
                features[site.name].append(acts[site.name][masked][keep])
            labels.append(label[keep])
            bar.update(1)
    bar.close()
    return {k: torch.cat(v) for k, v in features.items()}, torch.cat(labels)


def train_token_readouts(
    features: Mapping[str, torch.Tensor],
    labels: torch.Tensor,
    sites: Sequence[Site],
    k: int,
    config: ReadoutConfig,
) -> dict[str, Readout]:
    """A bias-free readout ``W [K, N]`` per site, trained on position features (module doc).

    Each is a one-position ``mean`` readout (its ``fc.weight`` is ``W``), so the readout files of
    :func:`~statmech_nn.snp.store.save_readouts` store and rebuild it.
    """
    if not len(labels):
        raise ConfigError(
            "no masked training position holds one of the K token labels: use more training "
            "samples (--limit-train) or a smaller --tokens"
        )
    dev = labels.device
    readouts = {
        s.name: make_readout("mean", 1, features[s.name].shape[1], k, s, config.seed).to(dev)
        for s in sites
    }
    fcs = {name: r.fc for name, r in readouts.items()}
    samples, size = len(labels), config.batch_size
    step = fit_step([fc.weight for fc in fcs.values()], config, batches_per_epoch(samples, size))
    for rows in shuffled_rows(samples, size, config.epochs, config.seed, dev):
        y = labels[rows]
        step(sum(label_loss(fcs[n](features[n][rows]), y) for n in fcs))  # type: ignore[arg-type]
    return {name: r.eval().requires_grad_(False) for name, r in readouts.items()}


@torch.no_grad()
def token_matrices(
    model: nn.Module,
    sites: Sequence[Site],
    weights: Mapping[str, torch.Tensor],
    data: Dataset,
    tokens: torch.Tensor,
    batch_size: int,
    device: torch.device,
    progress: bool = False,
) -> tuple[dict[str, SiteMatrices], int, int]:
    """``(results, left-out positions, masked positions)``: raw token matrices of every site.

    ``weights[site]`` is the readout weight ``[K, N]`` of the ``K`` ``tokens``, in their order.
    """
    vocab = int(tokens.max()) + 1
    sums = {}
    for site in sites:
        w = weights[site.name]
        full = torch.zeros(vocab, w.shape[1], dtype=w.dtype, device=w.device)
        full[tokens.to(w.device)] = w
        sums[site.name] = TokenSums(tokens, full)
    loader = _loader(data, batch_size)
    bar = progress_bar(len(loader), "token matrices", progress)
    masked_positions = 0
    with ActivationCapture(model, sites) as capture:
        for batch in loader:
            x, y = split_batch(batch, device)
            masked = y != IGNORE_INDEX
            masked_positions += int(masked.sum())
            acts = capture(x)
            for site in sites:
                sums[site.name].add(acts[site.name], masked, y.clamp(min=0))
            bar.update(1)
    bar.close()
    results = {}
    for site in sites:
        site_sums = sums[site.name]
        nodes = int(site_sums.weight.shape[1])
        raw, head_raw, accuracy = site_sums.finish(head_count(site, nodes))
        cpu = None if head_raw is None else head_raw.cpu()
        results[site.name] = SiteMatrices(site, raw.cpu(), cpu, accuracy, site_sums.counts.cpu())
    left_out = sums[sites[0].name].left_out if sites else 0
    return results, left_out, masked_positions


def compute_tokens(
    model: nn.Module,
    train: Dataset,
    evaluated: Dataset,
    sites: Sequence[Site],
    k: int = 100,
    token_names: Sequence[str] | None = None,
    config: ReadoutConfig | None = None,
    split: str = "test",
    device: str | torch.device | None = None,
    progress: bool = False,
    attrs: Mapping[str, Any] | None = None,
) -> tuple[xr.Dataset, dict[str, Readout]]:
    """The token-level SNP Dataset and the trained readouts (``fc.weight`` = ``W [K, N]``).

    ``train`` and ``evaluated`` are MLM datasets; ``config`` gives the readout training (its
    ``readout`` field is ignored: token readouts read one position). The model is left in its
    original train/eval mode.
    """
    if not sites:
        raise ConfigError("no sites to analyse")
    config = config or ReadoutConfig(readout="mean")
    dev = resolve_device(device)
    masked, targets = masked_targets(evaluated, config.batch_size)
    tokens, _ = top_tokens(masked, targets, k)
    was_training = model.training
    model.to(dev).eval()
    try:
        features, labels = position_features(
            model, sites, train, tokens, config.batch_size, dev, progress
        )
        readouts = train_token_readouts(features, labels, sites, k, config)
        weights = {name: r.fc.weight for name, r in readouts.items()}
        results, left_out, positions = token_matrices(
            model, sites, weights, evaluated, tokens, config.batch_size, dev, progress
        )
    finally:
        model.train(was_training)
    stored = {**json.loads(config.to_json()), "readout": TOKEN_READOUT}
    ds = token_dataset(
        results,
        tokens,
        token_names,
        k,
        positions,
        left_out,
        split,
        readout_config=json.dumps(stored, sort_keys=True),
        attrs={"token_train_positions": int(len(labels)), **dict(attrs or {})},
    )
    return ds, readouts
