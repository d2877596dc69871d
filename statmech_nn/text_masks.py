"""Masked pooling for text sites: padded positions never reach a readout (methods.md section 10).

Site activations ``a`` are ``[B, T, N]`` (sample, token, node); ``mask`` is the boolean ``[B, T]``
of real positions (``statmech_nn.data.text.padding_mask`` of a text batch; ``None`` means every
position is real, which gives exactly the unmasked image formulas). The rules:

- ``mean``: the mean over real positions only;
- ``seqpool``: the softmax over real positions only (padded positions get weight 0), both for the
  readout's own pooling (``post_pool``) and for one node's or one head's own pooling
  (``pre_pool``);
- ``flatten``: padded positions are zeroed, so their readout weights never contribute.

So appending padding to a sequence changes none of these (the padding-invariance the SNP
matrices need). A sequence with no real position is refused.
"""

from __future__ import annotations

import torch

from statmech_nn.errors import ConfigError


def check_mask(a: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """``mask`` as bool ``[B, T]`` matching ``a [B, T, N]``; all True when ``None``."""
    if a.ndim != 3:
        raise ValueError(f"site activations must be [B, T, N], got {list(a.shape)}")
    if mask is None:
        return torch.ones(a.shape[:2], dtype=torch.bool, device=a.device)
    if tuple(mask.shape) != tuple(a.shape[:2]):
        raise ValueError(f"mask {list(mask.shape)} does not match activations {list(a.shape)}")
    mask = mask.to(device=a.device, dtype=torch.bool)
    if not bool(mask.any(dim=1).all()):
        raise ConfigError("a sequence with no real (non-padding) position cannot be pooled")
    return mask


def zero_padding(a: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """``a`` with padded positions set to 0 (the input of a ``flatten`` readout)."""
    mask = check_mask(a, mask)
    return a * mask.unsqueeze(-1).to(a.dtype)


def masked_mean(a: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """``[B, N]``: the mean of ``a`` over the real positions of each sequence."""
    mask = check_mask(a, mask)
    weights = mask.to(a.dtype)
    return torch.einsum("bt,btn->bn", weights, a) / weights.sum(dim=1, keepdim=True)


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Softmax of ``scores`` along ``dim`` over the positions where ``mask`` holds, 0 elsewhere."""
    filled = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(filled, dim=dim)


def masked_seqpool_weights(scores: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Pooling weights ``[B, T]`` from pooling scores ``[B, T]`` (``a . g + g0``), 0 at padding."""
    if mask is None:
        return torch.softmax(scores, dim=1)
    if tuple(mask.shape) != tuple(scores.shape):
        raise ValueError(f"mask {list(mask.shape)} does not match scores {list(scores.shape)}")
    mask = mask.to(device=scores.device, dtype=torch.bool)
    if not bool(mask.any(dim=1).all()):
        raise ConfigError("a sequence with no real (non-padding) position cannot be pooled")
    return masked_softmax(scores, mask)


def masked_seqpool(
    a: torch.Tensor, mask: torch.Tensor | None, g: torch.Tensor, g0: torch.Tensor | float
) -> torch.Tensor:
    """``[B, N]``: ``z = sum_t w_t a[b,t,:]``, ``w = softmax_t(a . g + g0)`` over real positions.

    The readout's own pooling with all nodes (and the ``post_pool`` node quantity).
    """
    mask = check_mask(a, mask)
    w = masked_softmax(a @ g.to(a.dtype) + g0, mask)
    return torch.einsum("bt,btn->bn", w, a)


def masked_node_seqpool(
    a: torch.Tensor, mask: torch.Tensor | None, g: torch.Tensor, g0: torch.Tensor | float
) -> torch.Tensor:
    """``[B, N]``: node ``n`` pooled with weights from itself alone (the ``pre_pool`` quantity)."""
    mask = check_mask(a, mask)
    scores = a * g.to(a.dtype) + g0
    w = masked_softmax(scores, mask.unsqueeze(-1).expand_as(scores))
    return (w * a).sum(dim=1)


def masked_head_seqpool(
    a: torch.Tensor,
    mask: torch.Tensor | None,
    g: torch.Tensor,
    g0: torch.Tensor | float,
    heads: int,
) -> torch.Tensor:
    """``[B, N]``: each node pooled with the weights of its head alone (``pre_pool`` heads)."""
    mask = check_mask(a, mask)
    b, t, n = a.shape
    if heads < 1 or n % heads:
        raise ValueError(f"{n} nodes do not split into {heads} heads")
    ah = a.view(b, t, heads, n // heads)
    scores = (ah * g.to(a.dtype).view(heads, n // heads)).sum(-1) + g0
    w = masked_softmax(scores, mask.unsqueeze(-1).expand_as(scores))
    return torch.einsum("bth,bthk->bhk", w, ah).reshape(b, n)
