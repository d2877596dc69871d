"""Readouts of one kind and shape trained as one module: batched matmuls instead of S graphs.

The readouts share no parameter, and SGD (momentum, weight decay, Nesterov) acts element by
element, so training the stacked parameters on the stacked features is the same as training
each readout on its own (up to float summation order). On a GPU this turns the small per-site
kernels of every step into a few ``bmm`` / ``baddbmm`` launches.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from statmech_nn.readout.modules import Readout, SeqPoolReadout
from statmech_nn.text_masks import masked_softmax

__all__ = ["BatchedReadout", "equal_shape_groups"]


def equal_shape_groups(readouts: Sequence[Readout]) -> list[list[int]]:
    """Positions of ``readouts`` grouped by (kind, tokens, nodes, labels), in first-seen order."""
    groups: dict[tuple[str, int, int, int], list[int]] = {}
    for i, r in enumerate(readouts):
        groups.setdefault((r.kind, r.tokens, r.nodes, r.labels), []).append(i)
    return list(groups.values())


class BatchedReadout(nn.Module):
    """``S`` readouts of one kind and shape: ``forward(f [S, B, *features]) -> [S, B, labels]``.

    ``f`` holds each readout's cached :meth:`Readout.features`. Parameters are the readouts'
    own, stacked: ``weight [S, labels, features]`` and for ``seqpool`` ``pool_weight [S, N]``,
    ``pool_bias [S]``. :meth:`write_back` copies them into the readouts.
    """

    def __init__(self, readouts: Sequence[Readout]):
        super().__init__()
        if len(equal_shape_groups(readouts)) != 1:
            raise ValueError("batched readouts must share kind, tokens, nodes and labels")
        self.kind = readouts[0].kind
        self.size = len(readouts)
        self.weight = nn.Parameter(torch.stack([r.fc.weight.detach() for r in readouts]))
        if self.kind == "seqpool":
            pools = [r.pool for r in readouts if isinstance(r, SeqPoolReadout)]
            self.pool_weight = nn.Parameter(torch.stack([p.weight.detach()[0] for p in pools]))
            self.pool_bias = nn.Parameter(torch.stack([p.bias.detach()[0] for p in pools]))

    def pooled(self, f: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``seqpool``: the pooled ``[S, B, N]`` from ``[S, B, T, N]``; else ``f`` itself.

        ``mask [B, T]`` (text): padded positions get pooling weight 0.
        """
        if self.kind != "seqpool":
            return f
        s, b, t, n = f.shape
        scores = torch.baddbmm(
            self.pool_bias.view(s, 1, 1), f.reshape(s, b * t, n), self.pool_weight.view(s, n, 1)
        ).view(s, b, t)
        if mask is None:
            weights = torch.softmax(scores, dim=2)
        else:
            weights = masked_softmax(scores, mask.bool()[None].expand_as(scores), dim=2)
        pooled = torch.bmm(weights.reshape(s * b, 1, t).to(f.dtype), f.reshape(s * b, t, n))
        return pooled.view(s, b, n)

    def forward(self, f: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return torch.bmm(self.pooled(f, mask), self.weight.transpose(1, 2))

    def loss(
        self, f: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Sum over the readouts of their mean cross-entropy on labels ``y [B]``."""
        logits = self(f, mask)
        s, b, labels = logits.shape
        return F.cross_entropy(logits.reshape(s * b, labels), y.repeat(s), reduction="sum") / b

    @torch.no_grad()
    def write_back(self, readouts: Sequence[Readout]) -> None:
        """Copy the trained stacked parameters into ``readouts`` (the order given at build)."""
        for i, r in enumerate(readouts):
            r.fc.weight.copy_(self.weight[i])
            if isinstance(r, SeqPoolReadout):
                r.pool.weight[0].copy_(self.pool_weight[i])
                r.pool.bias[0].copy_(self.pool_bias[i])
