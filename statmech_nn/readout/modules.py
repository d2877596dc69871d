"""Readout modules: linear maps from site activations to the labels (docs/methods.md section 3).

Every readout ends in ``Linear(nodes, labels, bias=False)`` so that a node's field is exactly its
share of the logits. Each readout also says what an activation cache must hold for it
(:meth:`Readout.features`: the activations for ``seqpool``, only the token means for ``mean``,
the node-major flattening for ``flatten``) and how it reads those features
(:meth:`Readout.forward_features`), so that training on the cache is the same maths as training
on the activations.

Text sites come with the boolean padding mask ``[B, T]`` of real positions (``mask``; ``None``
for images, which gives the unmasked formulas exactly): ``seqpool`` and ``mean`` pool over the
real positions only and ``flatten`` sees zeros at padding (docs/methods.md section 10, through
:mod:`statmech_nn.text_masks`), so appending padding changes no readout output.
"""

from __future__ import annotations

import math
import zlib

import torch
from torch import nn

from statmech_nn.errors import ConfigError, UnknownNameError
from statmech_nn.sites import Site
from statmech_nn.text_masks import masked_mean, masked_seqpool_weights, zero_padding

__all__ = [
    "READOUTS",
    "FlattenReadout",
    "MeanReadout",
    "Readout",
    "SeqPoolReadout",
    "feature_shape",
    "make_readout",
    "readout_class",
    "site_mask",
    "site_seed",
]

READOUTS = ("seqpool", "flatten", "mean")


def site_mask(mask: torch.Tensor | None, a: torch.Tensor) -> torch.Tensor | None:
    """The padding mask that applies to a site's activations ``a [B, T, N]``.

    The inputs' mask when the site has one position per token, ``None`` for images and for a
    site of one position (already pooled). Any other position count cannot be matched to the
    tokens and is refused.
    """
    if mask is None or a.shape[1] == mask.shape[1]:
        return mask
    if a.shape[1] == 1:
        return None
    raise ConfigError(
        f"a site with {a.shape[1]} positions on inputs of {mask.shape[1]} tokens: its padding "
        "positions are unknown, so it cannot be read on text"
    )


class Readout(nn.Module):
    """Base class: ``forward(a [B, T, N], mask) -> logits [B, labels]``; ``site`` names its site.

    ``mask`` is the boolean ``[B, T]`` of real positions (text) or ``None``.
    """

    kind: str = ""
    fc: nn.Linear

    def __init__(self, tokens: int, nodes: int, labels: int, site: Site | None = None):
        super().__init__()
        self.tokens, self.nodes, self.labels = tokens, nodes, labels
        self.site = site

    def check(self, a: torch.Tensor) -> None:
        """Raise if ``a`` does not have the shape this readout was built for."""
        if (
            a.ndim != 3
            or a.shape[2] != self.nodes
            or (self.kind == "flatten" and a.shape[1] != self.tokens)
        ):
            raise ValueError(
                f"{self.kind} readout built for [B, {self.tokens}, {self.nodes}] got "
                f"{list(a.shape)}"
            )

    @staticmethod
    def features(a: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """What a cache holds for this readout, from activations ``[B, T, N]``: ``a`` itself.

        (``seqpool`` needs the mask again when it reads them: the cache keeps it.)
        """
        return a

    def forward_features(self, f: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Logits from cached :meth:`features` (equal to ``forward`` on the activations)."""
        return self(f, mask)


class SeqPoolReadout(Readout):
    """``z = sum_t softmax_t(a[b,t,:] . g + g0) a[b,t,:]``, logits ``W z``; ``pool`` holds g, g0."""

    kind = "seqpool"
    pool: nn.Linear

    def __init__(self, tokens: int, nodes: int, labels: int, site: Site | None = None):
        super().__init__(tokens, nodes, labels, site)
        self.pool = nn.Linear(nodes, 1)
        self.fc = nn.Linear(nodes, labels, bias=False)

    def weights(self, a: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Pooling weights ``[B, T]`` (0 at padding)."""
        scores = self.pool(a).squeeze(-1)
        if mask is None:
            return torch.softmax(scores, dim=1)
        return masked_seqpool_weights(scores, mask)

    def pooled(self, a: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return torch.einsum("bt,btn->bn", self.weights(a, mask), a)

    def forward(self, a: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.fc(self.pooled(a, mask))


class MeanReadout(Readout):
    """Token mean, then ``W``."""

    kind = "mean"

    def __init__(self, tokens: int, nodes: int, labels: int, site: Site | None = None):
        super().__init__(tokens, nodes, labels, site)
        self.fc = nn.Linear(nodes, labels, bias=False)

    def pooled(self, a: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return a.mean(dim=1) if mask is None else masked_mean(a, mask)

    def forward(self, a: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.fc(self.pooled(a, mask))

    @staticmethod
    def features(a: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Only the token means ``[B, N]`` (over real positions): all the readout reads."""
        return a.mean(dim=1) if mask is None else masked_mean(a, mask)

    def forward_features(self, f: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.fc(f)


class FlattenReadout(Readout):
    """``Linear(tokens * nodes, labels)`` on ``a`` flattened node-major (index ``n * T + t``).

    :meth:`weight_jnt` gives the weights as ``W[j, n, t]``, the order of methods section 4 (and
    of the authors' CNN readout, which flattens ``[C, H, W]`` maps).
    """

    kind = "flatten"

    def __init__(self, tokens: int, nodes: int, labels: int, site: Site | None = None):
        super().__init__(tokens, nodes, labels, site)
        self.fc = nn.Linear(tokens * nodes, labels, bias=False)

    def weight_jnt(self) -> torch.Tensor:
        return self.fc.weight.view(self.labels, self.nodes, self.tokens)

    def forward(self, a: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.fc(self.features(a, mask))

    @staticmethod
    def features(a: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """The node-major flattening ``[B, N * T]`` (zeros at padding), made once so no step
        copies a transpose."""
        if mask is not None:
            a = zero_padding(a, mask)
        return a.transpose(1, 2).flatten(1)

    def forward_features(self, f: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.fc(f)


_CLASSES: dict[str, type[Readout]] = {
    "seqpool": SeqPoolReadout,
    "flatten": FlattenReadout,
    "mean": MeanReadout,
}


def readout_class(kind: str) -> type[Readout]:
    """The readout class of ``kind`` (``seqpool``, ``flatten`` or ``mean``)."""
    if kind not in _CLASSES:
        raise UnknownNameError(f"unknown readout {kind!r}: choose one of {', '.join(READOUTS)}")
    return _CLASSES[kind]


def feature_shape(kind: str, tokens: int, nodes: int) -> tuple[int, ...]:
    """Per-sample shape of the cached :meth:`Readout.features` of a ``[T, N]`` site."""
    if kind == "mean":
        return (nodes,)
    if kind == "flatten":
        return (nodes * tokens,)
    readout_class(kind)
    return (tokens, nodes)


def site_seed(seed: int, name: str) -> int:
    """A seed that depends only on the run seed and the site's name."""
    return (int(seed) * 1_000_003 + zlib.crc32(name.encode())) % (2**63 - 1)


def make_readout(
    kind: str, tokens: int, nodes: int, labels: int, site: Site | None = None, seed: int = 0
) -> Readout:
    """A fresh readout: ``W ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in))``, pooling ``g = 0, g0 = 0``.

    Zero pooling weights start ``seqpool`` as the token mean. Seeded by ``(seed, site.name)``.
    """
    readout = readout_class(kind)(tokens, nodes, labels, site)
    gen = torch.Generator().manual_seed(site_seed(seed, site.name if site else kind))
    with torch.no_grad():
        fc = readout.fc.weight
        bound = 1.0 / math.sqrt(fc.shape[1])
        fc.copy_(torch.rand(fc.shape, generator=gen) * 2 * bound - bound)
        if isinstance(readout, SeqPoolReadout):
            readout.pool.weight.zero_()
            readout.pool.bias.zero_()
    return readout
