"""Sites: named places in a network whose activations are read by a readout (METHODS.md section 3)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Site:
    """Where to read activations, and how to lay them out as ``[batch, position, node]``.

    ``hook`` is ``"output"`` (forward hook on ``module``) or ``"input"`` (forward pre-hook, first
    positional input). ``layout`` is ``"tokens"`` for ``[B, T, N]`` tensors and ``"channels_first"``
    for ``[B, N, H, W]`` feature maps (transposed to ``[B, H*W, N]``). ``heads`` groups the nodes
    into equal contiguous heads (node ``c`` belongs to head ``c // (N / heads)``).
    """

    name: str
    kind: str
    layer: int
    module: str
    hook: str = "output"
    layout: str = "tokens"
    heads: int | None = None
