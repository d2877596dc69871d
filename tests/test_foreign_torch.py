"""Per-head capture of torch's nn.MultiheadAttention (torchvision ViT, nn.TransformerEncoder).

The reference is the library itself: the module's own output (whatever path torch takes: the
fused fast path in eval under no_grad, or the functional one) and its own per-head attention
weights (``need_weights=True, average_attn_weights=False``).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from statmech_nn.foreign import install_hook_points, remove_hook_points
from statmech_nn.sites import ActivationCapture, Site, resolve


def capture_heads(model: nn.Module, path: str, *args, **kwargs) -> torch.Tensor:
    """The ``heads_out`` tensor of the MHA at ``path`` during ``model(*args, **kwargs)``."""
    install_hook_points(model)
    got = []
    point = model.get_submodule(f"{path}.heads_out" if path else "heads_out")
    handle = point.register_forward_hook(lambda _m, _i, out: got.append(out))
    try:
        with torch.no_grad():
            model(*args, **kwargs)
    finally:
        handle.remove()
    return got[0]


def per_head_reference(mha: nn.MultiheadAttention, q, k, v, **masks) -> torch.Tensor:
    """Concatenated ``A_h V_h`` from torch's own per-head weights (batch_first tensors)."""
    with torch.no_grad():
        _, weights = mha(q, k, v, need_weights=True, average_attn_weights=False, **masks)
        d = mha.embed_dim
        if mha._qkv_same_embed_dim:
            w_v, b_v = mha.in_proj_weight[2 * d :], mha.in_proj_bias[2 * d :]
        else:
            w_v, b_v = mha.v_proj_weight, mha.in_proj_bias[2 * d :]
        values = F.linear(v, w_v, b_v)  # [B, S, d]
        b, s, _ = values.shape
        vh = values.view(b, s, mha.num_heads, -1).transpose(1, 2)  # [B, H, S, hd]
        ctx = weights @ vh  # [B, H, T, hd]
        return ctx.transpose(1, 2).reshape(b, -1, d)


def masks_for(batch: int, length: int, kind: str) -> dict:
    if kind == "none":
        return {}
    if kind == "padding":
        pad = torch.zeros(batch, length, dtype=torch.bool)
        pad[0, length - 2 :] = True
        return {"key_padding_mask": pad}
    causal = torch.triu(torch.full((length, length), float("-inf")), diagonal=1)
    return {"attn_mask": causal}


@pytest.mark.parametrize("length", [3, 7])
@pytest.mark.parametrize("mask", ["none", "padding", "causal"])
@pytest.mark.parametrize("batch_first", [True, False])
def test_mha_heads_project_to_the_module_output(length, mask, batch_first):
    torch.manual_seed(length)
    mha = nn.MultiheadAttention(12, 3, batch_first=batch_first).eval()
    x = torch.randn(2, length, 12)
    inp = x if batch_first else x.transpose(0, 1)
    masks = masks_for(2, length, mask)
    with torch.no_grad():
        out, _ = mha(inp, inp, inp, need_weights=False, **masks)
    ctx = capture_heads(mha, "", inp, inp, inp, need_weights=False, **masks)
    with torch.no_grad():
        assert (mha.out_proj(ctx) - out).abs().max() < 1e-5
        ctx_bf = ctx if batch_first else ctx.transpose(0, 1)
        bf = nn.MultiheadAttention(12, 3, batch_first=True).eval()
        bf.load_state_dict(mha.state_dict())
        ref = per_head_reference(bf, x, x, x, **masks)
    assert (ctx_bf - ref).abs().max() < 1e-5


def test_mha_with_separate_key_value_dims():
    torch.manual_seed(1)
    mha = nn.MultiheadAttention(8, 2, kdim=5, vdim=6, batch_first=True).eval()
    q, k, v = torch.randn(2, 4, 8), torch.randn(2, 6, 5), torch.randn(2, 6, 6)
    with torch.no_grad():
        out, _ = mha(q, k, v)
    ctx = capture_heads(mha, "", q, k, v)
    assert (mha.out_proj(ctx) - out).abs().max() < 1e-5
    assert (ctx - per_head_reference(mha, q, k, v)).abs().max() < 1e-5


def encoder_layer_reference(layer: nn.TransformerEncoderLayer, x, ctx) -> torch.Tensor:
    """A post-norm encoder layer's output computed from the captured per-head context."""
    h = layer.norm1(x + layer.self_attn.out_proj(ctx))
    return layer.norm2(h + layer.linear2(layer.activation(layer.linear1(h))))


@pytest.mark.parametrize("length", [4, 9])
@pytest.mark.parametrize("padded", [False, True])
def test_transformer_encoder_fast_and_nested_paths(length, padded):
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)
    encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=True).eval()
    x = torch.randn(3, length, 8)
    pad = torch.zeros(3, length, dtype=torch.bool)
    if padded:
        pad[0, length - 2 :] = True
        pad[1, length - 1 :] = True
        pad[2, length - 1 :] = True  # every row padded: the nested batch is shorter than x
    kwargs = {"src_key_padding_mask": pad} if padded else {}
    with torch.no_grad():
        fast = encoder(x, **kwargs)  # torch's fused / nested path, no hooks yet
    install_hook_points(encoder)
    sites = resolve(encoder, "all")
    assert [s.name for s in sites] == ["block0.mha", "block0.ff", "block1.mha", "block1.ff"]
    assert sites[0] == Site("block0.mha", "mha", 0, "layers.0.self_attn.heads_out", heads=2)
    with ActivationCapture(encoder, sites, stop_early=False) as cap, torch.no_grad():
        acts = cap_call(cap, encoder, x, kwargs)
    valid = ~pad
    with torch.no_grad():
        h0 = encoder_layer_reference(encoder.layers[0], x, acts["block0.mha"])
        assert (h0 - acts["block0.ff"])[valid].abs().max() < 1e-5
        ref = per_head_reference(encoder.layers[0].self_attn, x, x, x, key_padding_mask=pad)
        assert (acts["block0.mha"] - ref)[valid].abs().max() < 1e-5
        h1 = encoder_layer_reference(encoder.layers[1], acts["block0.ff"], acts["block1.mha"])
    assert (h1 - fast)[valid].abs().max() < 1e-5
    assert acts["block1.ff"].shape == x.shape


def cap_call(cap: ActivationCapture, model: nn.Module, x, kwargs) -> dict:
    """Run ``cap`` with keyword arguments for the model's forward (a padding mask)."""
    original = model.forward
    model.forward = lambda t: original(t, **kwargs)  # type: ignore[method-assign]
    try:
        return cap(x)
    finally:
        del model.forward


def test_torchvision_vision_transformer_heads():
    from torchvision.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    model = VisionTransformer(16, 4, 2, 4, 16, 32, num_classes=3).eval()
    sites = resolve(model, "mha")
    assert [(s.name, s.layer, s.heads) for s in sites] == [(f"block{i}.mha", i, 4) for i in (0, 1)]
    block = model.encoder.layers.encoder_layer_1
    seen = {}
    block.self_attention.register_forward_hook(
        lambda m, a, out: seen.update(x=a[0], out=out[0].detach())
    )
    with ActivationCapture(model, sites, stop_early=False) as cap, torch.no_grad():
        acts = cap(torch.randn(2, 3, 16, 16))
        ctx = acts["block1.mha"]
        assert (block.self_attention.out_proj(ctx) - seen["out"]).abs().max() < 1e-5
        x = seen["x"]
        ref = per_head_reference(block.self_attention, x, x, x)
    assert (ctx - ref).abs().max() < 1e-5
    remove_hook_points(model)
    assert not any(hasattr(m, "heads_out") for m in model.modules())
    hooks = block.self_attention._forward_hooks.values()
    assert [getattr(h, "__name__", "") for h in hooks] == ["<lambda>"]  # only the test's own


def test_training_mode_dropout_is_refused():
    from statmech_nn.foreign.capture import NotCapturableError

    mha = nn.MultiheadAttention(8, 2, dropout=0.5, batch_first=True).train()
    x = torch.randn(1, 3, 8)
    with pytest.raises(NotCapturableError, match="eval"):
        capture_heads(mha, "", x, x, x)
