"""A readout under an ANDC mask as torch weights: expand a node mask, zero, retrain ([AFCC])."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr

from statmech_nn.errors import SchemaError

if TYPE_CHECKING:
    import torch


def _as_tensor(mask: Any) -> torch.Tensor:
    """A bool tensor from a mask given as a DataArray, array or tensor."""
    import torch

    if isinstance(mask, xr.DataArray):
        mask = mask.values
    return torch.as_tensor(np.asarray(mask, dtype=bool))


def expand_mask(mask: Any, weight_shape: Sequence[int], tokens_major: bool = False) -> torch.Tensor:
    """A node -> label mask ``[nodes, labels]`` expanded to the shape of a readout weight.

    ``weight_shape`` is ``[labels, nodes]`` (seqpool, mean), ``[labels, nodes, tokens]`` or
    ``[labels, nodes * tokens]`` (flatten; node-major ``n * T + t`` unless ``tokens_major``, where
    the flat index is ``t * N + n``). For flatten every token position of a node shares its mask.
    """
    m = _as_tensor(mask)
    n_nodes, n_labels = m.shape
    shape = tuple(int(s) for s in weight_shape)
    if shape[0] != n_labels:
        raise SchemaError(f"readout weight {shape} has {shape[0]} labels, the mask {n_labels}")
    mt = m.T
    if len(shape) == 3 and shape[1] == n_nodes:
        return mt[:, :, None].expand(shape).clone()
    if len(shape) == 2 and shape[1] == n_nodes:
        return mt.clone()
    if len(shape) == 2 and shape[1] % n_nodes == 0:
        tokens = shape[1] // n_nodes
        if tokens_major:
            return mt[:, None, :].expand(n_labels, tokens, n_nodes).reshape(shape).clone()
        return mt[:, :, None].expand(n_labels, n_nodes, tokens).reshape(shape).clone()
    raise SchemaError(f"readout weight of shape {shape} does not fit a mask of {tuple(m.shape)}")


def mask_weight(weight: torch.Tensor, mask: Any, tokens_major: bool = False) -> torch.Tensor:
    """``weight`` with the cut connections set to zero (a new tensor; see :func:`expand_mask`)."""
    full = expand_mask(mask, weight.shape, tokens_major).to(weight.device)
    return weight * full.to(weight.dtype)


def retrain_masked(
    weight: torch.Tensor,
    mask: torch.Tensor,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    epochs: int = 5,
    lr: float = 0.01,
    momentum: float = 0.9,
    weight_decay: float = 1e-3,
    batch_size: int = 128,
    seed: int = 0,
) -> torch.Tensor:
    """Short retraining of a bias-free linear readout under a mask ([AFCC]).

    ``logits = inputs @ (W * mask).T`` with ``weight``/``mask`` of shape ``[labels, in]``
    (use :func:`expand_mask` for a node mask) and ``inputs [samples, in]`` (pooled node inputs,
    or flattened activations in the weight's layout). SGD with Nesterov momentum, cross-entropy;
    the mask is re-applied to the weight after every optimiser step, so cut weights stay exactly
    zero. Returns the new weight.
    """
    import torch

    from statmech_nn.readout.fit import FitStep, readout_sgd, shuffled_rows
    from statmech_nn.train.steps import label_loss

    mask = mask.to(torch.bool)
    if mask.shape != weight.shape:
        raise SchemaError(f"mask {tuple(mask.shape)} and weight {tuple(weight.shape)} differ")
    w = (weight.detach().clone() * mask).requires_grad_(True)
    optimizer = readout_sgd([w], lr, momentum, momentum > 0, weight_decay)
    step = FitStep(optimizer, after_step=lambda: w.mul_(mask))
    inputs = inputs.to(w.dtype)
    for idx in shuffled_rows(inputs.shape[0], batch_size, epochs, seed):
        step(label_loss(inputs[idx] @ w.T, labels[idx]))
    return w.detach()
