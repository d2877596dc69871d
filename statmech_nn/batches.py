"""Model inputs of a batch, whatever the modality: image tensors or text dicts.

An image batch's inputs are a float tensor ``[B, C, H, W]``; a text batch's are the dict
``{"input_ids": [B, T], "attention_mask": [B, T]}`` of :mod:`statmech_nn.data.text` (mask 1 at
real tokens). Everything that moves a batch, feeds it to a model or needs its padding goes
through these functions, so training, readouts and the SNP pass treat both alike.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

Inputs = torch.Tensor | Mapping[str, torch.Tensor]
"""A batch's model inputs: an image tensor, or a text batch's dict of tensors."""

__all__ = [
    "Inputs",
    "call_model",
    "head",
    "padding_mask",
    "split_batch",
    "to_device",
]


def to_device(x: Any, device: torch.device | str, non_blocking: bool = False) -> Any:
    """``x`` (a tensor, or a dict of tensors) on ``device``."""
    if isinstance(x, Mapping):
        return {k: v.to(device, non_blocking=non_blocking) for k, v in x.items()}
    return x.to(device, non_blocking=non_blocking)


def call_model(model: nn.Module, x: Any) -> Any:
    """``model``'s output for inputs ``x``: ``model(x)``, or for text the ids with their mask.

    Text inputs call ``model(input_ids, attention_mask=mask)`` (the ``ForeignModel`` convention),
    so padding never takes part in attention.
    """
    if isinstance(x, Mapping):
        return model(x["input_ids"], attention_mask=x["attention_mask"])
    return model(x)


def padding_mask(x: Any) -> torch.Tensor | None:
    """Boolean ``[B, T]`` mask of real positions of text inputs; ``None`` for images."""
    if isinstance(x, Mapping):
        return x["attention_mask"].bool()
    return None


def head(x: Any, n: int) -> Any:
    """The first ``n`` samples of inputs ``x``."""
    if isinstance(x, Mapping):
        return {k: v[:n] for k, v in x.items()}
    return x[:n]


def split_batch(batch: Any, device: torch.device | str) -> tuple[Any, torch.Tensor]:
    """``(inputs, int64 labels)`` of a loader batch ``(inputs, labels)``, on ``device``."""
    x, y = batch[0], batch[1]
    labels = torch.as_tensor(y).to(device, non_blocking=True).long()
    return to_device(x, device, non_blocking=True), labels
