"""Multi-head self-attention of our CCT, with the kernel picked by device and dtype.

``heads_out`` is the identity hook point on the concatenated per-head outputs (the ``mha`` site).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from statmech_nn.errors import ConfigError

ATTENTION_PATHS = ("auto", "sdpa", "matmul")


@functools.cache
def native_bf16_cpu() -> bool:
    """Whether this CPU has bf16 dot-product instructions (AVX512-BF16 or AMX tiles)."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


def matmul_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float = 0.0
) -> torch.Tensor:
    """``softmax(q k^T / sqrt(d_head)) v`` as two explicit matmuls (scores materialised)."""
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
    probs = scores.softmax(dim=-1)
    if dropout_p > 0.0:
        probs = F.dropout(probs, dropout_p)
    return probs @ v


def uses_matmul_attention(q: torch.Tensor, path: str = "auto") -> bool:
    """The attention kernel for ``q``: explicit matmuls for bf16 on a CPU with native bf16.

    The CPU flash kernel gains nothing in bf16 (measured on a 16-core Xeon with native bf16: 153 ms
    vs 134 ms fp32 per block, against 80 ms for bf16 matmuls), while on a CPU without them (AVX2)
    the matmuls are emulated and flash stays the faster of the two (1.1 s vs 2.3 s per block,
    batch 32). fp32, fp16 and CUDA keep SDPA (flash). ``path`` ``"sdpa"``/``"matmul"`` forces one.
    """
    if path != "auto":
        return path == "matmul"
    return q.device.type == "cpu" and q.dtype == torch.bfloat16 and native_bf16_cpu()


def set_attention_path(model: nn.Module, path: str) -> None:
    """Force the attention kernel of every :class:`Attention` in ``model`` (``"auto"`` picks)."""
    if path not in ATTENTION_PATHS:
        raise ConfigError(f"unknown attention path {path!r}; choose one of {ATTENTION_PATHS}")
    for module in model.modules():
        if isinstance(module, Attention):
            module.path = path


class Attention(nn.Module):
    """Multi-head self-attention through ``F.scaled_dot_product_attention`` or two matmuls.

    ``heads_out`` (an ``nn.Identity``) sees the concatenated per-head outputs ``[B, N, d]`` before
    ``proj``; channel ``c`` belongs to head ``c // (d / heads)``. The kernel is picked per call by
    :func:`uses_matmul_attention` from the device and dtype (``path``, not stored in the config
    or the state dict, forces one: ``"auto"``, ``"sdpa"`` or ``"matmul"``); both compute the same
    function, so the hook points and the logits agree to float tolerance.

    Trade-off: attention dropout is passed to SDPA only in training mode. With
    ``attention_dropout == 0`` (or in eval) SDPA may take its fused fast path (flash attention on
    CPU and GPU); a positive rate in training forces the slower unfused math kernel on CPU. The
    reference trains with 0.1; set it to 0 for speed at the cost of that regulariser. Attention
    probabilities are not a hook point (SDPA never materialises them).
    """

    def __init__(
        self, dim: int, num_heads: int, attention_dropout: float, projection_dropout: float
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embedding_dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.attention_dropout = attention_dropout
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.heads_out = nn.Identity()
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(projection_dropout)
        self.path = "auto"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        dropout_p = self.attention_dropout if self.training else 0.0
        if uses_matmul_attention(q, self.path):
            x = matmul_attention(q, k, v, dropout_p)
        else:
            x = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
        x = self.heads_out(x.transpose(1, 2).reshape(B, N, C))
        return self.proj_drop(self.proj(x))
