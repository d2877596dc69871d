"""Token-level SNP after masked-language-model pre-training (docs/methods.md section 10, [NLP-SSB]).

The labels are the ``K`` most frequent true tokens at masked positions (:func:`top_tokens`; ties
broken by the smaller token id). The readout is applied per masked position to that position's
own site activation (no pooling): with the vocabulary readout ``W [V, N]`` restricted to the
``K`` tokens, node ``n`` sends ``f_n(p, j) = W[j, n] a[p, n]`` to label ``j`` at position ``p``,
and ``M_n[i, j]`` is the mean of ``f_n(p, j)`` over the masked positions whose true token is the
``i``-th. Masked positions whose true token is not among the ``K`` are left out and counted.
Each field is linear in ``a``, so the matrices follow from the class means of the activations
(:class:`TokenSums`, streaming). Sites with heads get single-head matrices, the sums of their
nodes' matrices. The result is the SNP Dataset of :func:`statmech_nn.snp.build_dataset` (the same
schema, normalisation and binarisation) with the token strings as label names, ``readout =
"token"`` and the attrs ``token_ids``, ``token_k``, ``masked_positions`` and
``left_out_positions``. ``acc_{kind}`` is the top-1 accuracy of the restricted readout (no bias)
at the kept positions. Pure: tensors in, a Dataset out; wiring to MLM pre-training lives
elsewhere.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import xarray as xr

from statmech_nn.errors import ConfigError
from statmech_nn.sites import Site
from statmech_nn.snp.dataset import build_dataset
from statmech_nn.snp.engine import SiteMatrices, head_count

__all__ = [
    "TOKEN_READOUT",
    "refuse_token_readout",
    "TokenSums",
    "token_dataset",
    "token_label_names",
    "token_site_matrices",
    "token_snp",
    "top_tokens",
]

TOKEN_READOUT = "token"
"""The ``readout`` attr of a token-level SNP Dataset."""


def refuse_token_readout(ds: xr.Dataset, analysis: str) -> None:
    """An analysis that reads sample readouts (the ANDC study) asked of a token-level SNP tensor:
    one :class:`ConfigError` that says so, rather than an unknown-readout error."""
    if ds.attrs.get("readout") == TOKEN_READOUT:
        raise ConfigError(
            f"{analysis} reads per-sample readouts and does not yet support token-level SNP runs "
            "(--readout token); run it on an SNP run of a classification checkpoint"
        )


def _masked_targets(masked: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The true token ids ``[P]`` at the masked positions (both arguments ``[B, T]``)."""
    if masked.shape != targets.shape or masked.ndim != 2:
        raise ValueError(
            f"masked {list(masked.shape)} and targets {list(targets.shape)} must both be [B, T]"
        )
    ids = targets[masked.bool()].long()
    if len(ids) and int(ids.min()) < 0:
        raise ConfigError("a masked position has a negative target token id")
    return ids


def top_tokens(
    masked: torch.Tensor, targets: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids [K], counts [K])``: the ``k`` most frequent true tokens at the masked positions.

    Ordered by count (most frequent first), ties by the smaller id. Refused when fewer than
    ``k`` distinct tokens occur at masked positions (their rows would be undefined).
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError(f"the number of token labels K must be an integer >= 1, got {k!r}")
    ids = _masked_targets(masked, targets).cpu()
    counts = torch.bincount(ids, minlength=1).numpy() if len(ids) else np.zeros(0, np.int64)
    present = np.flatnonzero(counts)
    if len(present) < k:
        raise ConfigError(
            f"only {len(present)} distinct tokens occur at masked positions; pick K <= "
            f"{len(present)} (asked for {k})"
        )
    order = np.lexsort((present, -counts[present]))[:k]
    chosen = present[order]
    return torch.as_tensor(chosen, dtype=torch.long), torch.as_tensor(counts[chosen])


class TokenSums:
    """Streaming class sums of one site's activations at masked positions of the ``K`` tokens."""

    def __init__(self, tokens: torch.Tensor, weight: torch.Tensor, vocab_size: int | None = None):
        """``tokens`` ``[K]`` ids; ``weight`` the vocabulary readout ``[V, N]``."""
        if weight.ndim != 2:
            raise ValueError(f"the readout weight must be [V, N], got {list(weight.shape)}")
        vocab = int(weight.shape[0]) if vocab_size is None else int(vocab_size)
        if int(tokens.max()) >= vocab:
            raise ConfigError(f"token id {int(tokens.max())} is outside the {vocab}-token readout")
        self.tokens = tokens.long()
        self.weight = weight.detach()[self.tokens.to(weight.device)].double()  # [K, N]
        self.index = torch.full((vocab,), -1, dtype=torch.long)
        self.index[self.tokens.cpu()] = torch.arange(len(self.tokens))
        k, n = self.weight.shape
        self.sums = torch.zeros(k, n, dtype=torch.float64, device=weight.device)
        self.counts = torch.zeros(k, dtype=torch.long, device=weight.device)
        self.correct = 0
        self.left_out = 0

    def add(self, a: torch.Tensor, masked: torch.Tensor, targets: torch.Tensor) -> None:
        """Add one batch: activations ``a [B, T, N]``, ``masked`` and ``targets`` ``[B, T]``."""
        if a.ndim != 3 or a.shape[:2] != masked.shape or a.shape[2] != self.weight.shape[1]:
            raise ValueError(
                f"activations {list(a.shape)} do not match masked {list(masked.shape)} and "
                f"{self.weight.shape[1]} readout nodes"
            )
        ids = _masked_targets(masked, targets).cpu()
        inside = ids < len(self.index)
        label = torch.full_like(ids, -1)
        label[inside] = self.index[ids[inside]]
        keep = label >= 0
        self.left_out += int((~keep).sum())
        dev = self.sums.device
        x = a[masked.bool()][keep.to(a.device)].to(dev, torch.float64)  # [P, N]
        y = label[keep].to(dev)
        self.sums.index_add_(0, y, x)
        self.counts += torch.bincount(y, minlength=len(self.tokens))
        self.correct += int(((x @ self.weight.T).argmax(1) == y).sum())

    def finish(self, heads: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None, float]:
        """``(raw [N, K, K], head_raw [H, K, K] or None, accuracy)``; empty tokens refused."""
        if bool((self.counts == 0).any()):
            missing = self.tokens[(self.counts == 0).cpu()].tolist()
            raise ConfigError(f"tokens {missing} have no kept masked position: rows undefined")
        means = self.sums / self.counts[:, None].double()  # [K, N]
        raw = means.T[:, :, None] * self.weight.T[:, None, :]  # raw[n, i, j]
        head_raw = None
        if heads is not None:
            n, k = raw.shape[0], raw.shape[1]
            head_raw = raw.view(heads, n // heads, k, k).sum(1)
        accuracy = self.correct / max(int(self.counts.sum()), 1)
        return raw, head_raw, accuracy


def token_site_matrices(
    site: Site,
    a: torch.Tensor,
    masked: torch.Tensor,
    targets: torch.Tensor,
    weight: torch.Tensor,
    tokens: torch.Tensor,
) -> tuple[SiteMatrices, int]:
    """One site's raw token matrices (and single-head ones) and the left-out position count."""
    sums = TokenSums(tokens, weight)
    sums.add(a, masked, targets)
    raw, head_raw, accuracy = sums.finish(head_count(site, int(weight.shape[1])))
    cpu = None if head_raw is None else head_raw.cpu()
    return SiteMatrices(site, raw.cpu(), cpu, accuracy, sums.counts.cpu()), sums.left_out


def token_label_names(tokens: torch.Tensor, token_names: Sequence[str] | None) -> list[str]:
    """The label names of the chosen ``tokens``: their strings (default: the ids)."""
    if token_names is None:
        return [str(t) for t in tokens.tolist()]
    if int(tokens.max()) >= len(token_names):
        raise ConfigError(f"{len(token_names)} token names do not cover token {tokens.max()}")
    return [str(token_names[t]) for t in tokens.tolist()]


def token_dataset(
    results: Mapping[str, SiteMatrices],
    tokens: torch.Tensor,
    token_names: Sequence[str] | None,
    k: int,
    masked_positions: int,
    left_out: int,
    split: str = "test",
    readout_config: str = "{}",
    attrs: Mapping[str, Any] | None = None,
) -> xr.Dataset:
    """The token-level SNP Dataset of per-site raw matrices (:func:`token_site_matrices`)."""
    info = {
        "token_ids": [int(t) for t in tokens.tolist()],
        "token_k": int(k),
        "masked_positions": int(masked_positions),
        "left_out_positions": int(left_out),  # the same for every site
        **dict(attrs or {}),
    }
    return build_dataset(
        results,
        token_label_names(tokens, token_names),
        readout=TOKEN_READOUT,
        silencing="none",
        split=split,
        readout_config=readout_config,
        attrs=info,
    )


def token_snp(
    sites: Sequence[Site],
    activations: Mapping[str, torch.Tensor],
    masked: torch.Tensor,
    targets: torch.Tensor,
    weights: Mapping[str, torch.Tensor],
    k: int = 100,
    token_names: Sequence[str] | None = None,
    split: str = "test",
    attrs: Mapping[str, Any] | None = None,
) -> xr.Dataset:
    """The token-level SNP Dataset of ``sites`` (module docstring).

    ``activations[site.name]`` is ``[B, T, N]`` at every position, ``masked`` the bool ``[B, T]``
    of masked positions, ``targets`` ``[B, T]`` the true token ids (read at masked positions
    only), ``weights[site.name]`` the site's vocabulary readout ``[V, N]``, ``token_names`` the
    string of every token id (default: the ids).
    """
    if not sites:
        raise ConfigError("no sites to analyse")
    tokens, _ = top_tokens(masked, targets, k)
    token_label_names(tokens, token_names)  # refused before any matrix is computed
    results, left_out = {}, 0
    for site in sites:
        results[site.name], left_out = token_site_matrices(
            site, activations[site.name], masked, targets, weights[site.name], tokens
        )
    masked_positions = int(masked.bool().sum())
    return token_dataset(
        results, tokens, token_names, k, masked_positions, left_out, split, attrs=attrs
    )
