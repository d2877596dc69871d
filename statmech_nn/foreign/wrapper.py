"""``ForeignModel``: a library's classifier with our model interface.

``forward(x)`` returns logits; ``config`` is the JSON-able dict that rebuilds it through the
registry (``statmech_nn.models.from_config``); ``sites()`` are the family's sites. The library's
module is ``net``, so its own parameter names appear under the prefix ``net.`` (``PREFIX``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from statmech_nn.foreign.families import family_sites
from statmech_nn.sites import Site

PREFIX = "net."


class ForeignModel(nn.Module):
    """Wraps ``net`` (called as ``net(x)``); ``config`` holds ``name`` and the rebuild values."""

    def __init__(self, net: nn.Module, config: dict[str, Any]) -> None:
        super().__init__()
        self.net = net
        self.config = dict(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def sites(self) -> list[Site]:
        """``block{i}.mha`` and ``block{i}.ff`` per block (:mod:`statmech_nn.foreign.families`)."""
        return family_sites(self)


def build_record(
    library: str,
    name: str,
    num_classes: int,
    img_size: int | None,
    named: bool,
    pretrained: bool,
    initial_weights: str,
    options: dict[str, Any],
) -> dict[str, Any]:
    """The model config a checkpoint stores to rebuild ``library:name`` without any download.

    ``pretrained`` is always recorded False: the checkpoint brings the weights.
    """
    return {
        "name": f"{library}:{name}",
        "num_classes": num_classes,
        "img_size": img_size or (32 if named else None),
        "pretrained": False,
        "initial_weights": "pretrained" if pretrained else initial_weights,
        **options,
    }
