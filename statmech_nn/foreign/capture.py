"""Identity hook points where a library never exposes a tensor as a module call.

``nn.MultiheadAttention`` computes its output projection inside ``F.multi_head_attention_forward``
(or a fused kernel), so the per-head context is never the input of a module. As TransformerLens
does, we add an ``nn.Identity`` hook point (``heads_out``) to each such module and a forward hook
that, only while someone hooks ``heads_out``, recomputes the concatenated per-head context from
the module's own call (its inputs, masks and weights) with torch's own functional attention and
an identity output projection, then passes it through ``heads_out``. Channel ``c`` is head
``c // head_dim``, torch's head split. ``nn.TransformerEncoderLayer`` gets a ``block_out`` point:
its output, padded back to the input's length when the encoder packed it as a nested tensor.

The points hold no parameters, so state dicts are unchanged; :func:`remove_hook_points` undoes
:func:`install_hook_points`. Hooks on the points come and go with ``ActivationCapture``.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from statmech_nn.errors import StatmechError

HEADS_OUT = "heads_out"
BLOCK_OUT = "block_out"
_PADDED_SIZE = "_statmech_padded_size"
_MHA_SIGNATURE = inspect.signature(nn.MultiheadAttention.forward)


class NotCapturableError(StatmechError):
    """The per-head context cannot be recovered exactly (e.g. attention dropout in training)."""


def _hooked(point: nn.Module) -> bool:
    return bool(point._forward_hooks or point._forward_pre_hooks)


def _padded(t: torch.Tensor, size: torch.Size | None) -> torch.Tensor:
    """A nested (packed) batch as a dense zero-padded tensor of ``size`` (its own max if None)."""
    if not t.is_nested:
        return t
    return t.to_padded_tensor(0.0, size) if size is not None else t.to_padded_tensor(0.0)


def mha_context(mha: nn.MultiheadAttention, args: tuple, kwargs: dict[str, Any]) -> torch.Tensor:
    """The concatenated per-head context of one ``mha(*args, **kwargs)`` call, before out_proj.

    Same layout as the module's output (``[B, T, d]`` with ``batch_first``, else ``[T, B, d]``).
    Runs ``F.multi_head_attention_forward`` with the module's weights and masks and an identity
    output projection, so it is torch's own per-head computation.
    """
    if mha.training and mha.dropout > 0:
        raise NotCapturableError(
            "nn.MultiheadAttention in training mode with dropout: its per-head context is "
            "random; capture in eval mode (model.eval())"
        )
    call = _MHA_SIGNATURE.bind(mha, *args, **kwargs)
    call.apply_defaults()
    a = call.arguments
    query, key, value = a["query"], a["key"], a["value"]
    key_padding_mask, attn_mask = a["key_padding_mask"], a["attn_mask"]
    if query.is_nested:  # the encoder's fast path packed a left-aligned padded batch
        size = getattr(mha, _PADDED_SIZE, None)
        lengths = torch.tensor([len(t) for t in query.unbind()], device=query.device)
        query = key = value = _padded(query, size)
        positions = torch.arange(query.shape[1], device=query.device)
        key_padding_mask = positions[None, :] >= lengths[:, None]
    batched = query.dim() == 3
    if mha.batch_first and batched:
        query, key, value = (t.transpose(0, 1) for t in (query, key, value))
    eye = torch.eye(mha.embed_dim, dtype=query.dtype, device=query.device)
    separate = not mha._qkv_same_embed_dim
    context, _ = F.multi_head_attention_forward(
        query,
        key,
        value,
        mha.embed_dim,
        mha.num_heads,
        mha.in_proj_weight,
        mha.in_proj_bias,
        mha.bias_k,
        mha.bias_v,
        mha.add_zero_attn,
        mha.dropout,
        eye,
        None,
        training=mha.training,
        key_padding_mask=key_padding_mask,
        need_weights=False,
        attn_mask=attn_mask,
        use_separate_proj_weight=separate,
        q_proj_weight=mha.q_proj_weight if separate else None,
        k_proj_weight=mha.k_proj_weight if separate else None,
        v_proj_weight=mha.v_proj_weight if separate else None,
        is_causal=a["is_causal"],
    )
    return context.transpose(0, 1) if mha.batch_first and batched else context


def _emit_heads(mha: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
    point = getattr(mha, HEADS_OUT)
    if _hooked(point):
        point(mha_context(mha, args, kwargs))  # type: ignore[arg-type]


def _emit_block(layer: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
    point = getattr(layer, BLOCK_OUT)
    if _hooked(point):
        point(_padded(output, getattr(layer, _PADDED_SIZE, None)))


def _remember_size(encoder: nn.Module, args: tuple, kwargs: dict) -> None:
    src = args[0] if args else kwargs.get("src")
    layers = encoder.layers
    if isinstance(src, torch.Tensor) and not src.is_nested and isinstance(layers, nn.ModuleList):
        for layer in layers:
            setattr(layer, _PADDED_SIZE, src.shape)
            setattr(layer.self_attn, _PADDED_SIZE, src.shape)


_OURS = (_emit_heads, _emit_block, _remember_size)


def _has_hook(module: nn.Module, fn: Any) -> bool:
    hooks = {**module._forward_hooks, **module._forward_pre_hooks}
    return any(h is fn for h in hooks.values())


def _add_point(module: nn.Module, name: str, hook: Any) -> None:
    module.add_module(name, nn.Identity())
    module.register_forward_hook(hook, with_kwargs=True)


def install_hook_points(model: nn.Module) -> int:
    """Add the hook points to every ``nn.MultiheadAttention`` / encoder layer (idempotent).

    Returns how many modules got new points.
    """
    added = 0
    for module in list(model.modules()):
        if isinstance(module, nn.MultiheadAttention) and not hasattr(module, HEADS_OUT):
            _add_point(module, HEADS_OUT, _emit_heads)
            added += 1
        elif isinstance(module, nn.TransformerEncoderLayer) and not hasattr(module, BLOCK_OUT):
            _add_point(module, BLOCK_OUT, _emit_block)
            added += 1
        elif isinstance(module, nn.TransformerEncoder) and not _has_hook(module, _remember_size):
            module.register_forward_pre_hook(_remember_size, with_kwargs=True)
            added += 1
    return added


def remove_hook_points(model: nn.Module) -> None:
    """Undo :func:`install_hook_points`: remove the points and their forward hooks."""
    for module in list(model.modules()):
        for hooks, kw in (
            (module._forward_hooks, module._forward_hooks_with_kwargs),
            (module._forward_pre_hooks, module._forward_pre_hooks_with_kwargs),
        ):
            for key in [k for k, h in hooks.items() if any(h is f for f in _OURS)]:
                del hooks[key]
                kw.pop(key, None)
        for name in (HEADS_OUT, BLOCK_OUT):
            if isinstance(getattr(module, name, None), nn.Identity):
                delattr(module, name)
