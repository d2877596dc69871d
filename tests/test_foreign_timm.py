"""Per-head capture of timm's ``Attention`` (ViT, DeiT), fused (SDPA) and eager, with masks.

References: the module's own output, and the per-head context computed here from its ``qkv``
weights split as timm documents (``reshape(B, N, 3, heads, head_dim)``).
"""

from __future__ import annotations

import pytest
import torch

from statmech_nn.foreign import find_blocks
from statmech_nn.sites import ActivationCapture, resolve

timm = pytest.importorskip("timm")
from timm.layers import Attention  # noqa: E402


def per_head_reference(attn, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    b, n, c = x.shape
    h = attn.num_heads
    qkv = attn.qkv(x).reshape(b, n, 3, h, c // h).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    scores = (q @ k.transpose(-2, -1)) / (c // h) ** 0.5
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, n, c)


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("length", [3, 8])
@pytest.mark.parametrize("masked", [False, True])
def test_attention_heads_project_to_the_module_output(fused, length, masked):
    torch.manual_seed(length)
    attn = Attention(12, num_heads=3, qkv_bias=True).eval()
    attn.fused_attn = fused
    x = torch.randn(2, length, 12)
    mask = None
    if masked:
        mask = torch.ones(2, 1, length, length, dtype=torch.bool)
        mask[0, :, :, length - 2 :] = False  # two padded keys in the first sample
    model = torch.nn.Sequential(attn)
    (block,) = find_blocks(model)
    site = block.sites(dict(model.named_modules()))[0]
    assert (site.module, site.hook, site.heads) == ("0.proj", "input", 3)
    got = []
    handle = attn.proj.register_forward_pre_hook(lambda _m, a: got.append(a[0]))
    with torch.no_grad():
        out = attn(x, attn_mask=mask)
        handle.remove()
        with ActivationCapture(model, [site]) as cap:
            forward = model.forward
            model.forward = lambda t: forward(t) if mask is None else attn(t, attn_mask=mask)
            try:
                ctx = cap(x)[site.name]
            finally:
                del model.forward
        assert (attn.proj(ctx) - out).abs().max() < 1e-5
        assert (ctx - per_head_reference(attn, x, mask)).abs().max() < 1e-5


def test_scale_norm_reads_the_context_before_the_norm():
    attn = Attention(8, num_heads=2, scale_norm=True, norm_layer=torch.nn.LayerNorm).eval()
    model = torch.nn.Sequential(attn)
    site = find_blocks(model)[0].sites(dict(model.named_modules()))[0]
    assert (site.module, site.hook) == ("0.norm", "input")
    x = torch.randn(1, 5, 8)
    with torch.no_grad():
        out = attn(x)
    with ActivationCapture(model, [site]) as cap, torch.no_grad():
        ctx = cap(x)[site.name]
    with torch.no_grad():
        assert (attn.proj(attn.norm(ctx)) - out).abs().max() < 1e-5
        assert (ctx - per_head_reference(attn, x, None)).abs().max() < 1e-5


@pytest.mark.parametrize("name", ["vit_tiny_patch16_224", "deit_tiny_patch16_224"])
def test_timm_vits_sites_and_exact_heads(name):
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, img_size=32, depth=3, num_classes=5).eval()
    sites = resolve(model, "all")
    assert [s.name for s in sites] == [f"block{i}.{k}" for i in range(3) for k in ("mha", "ff")]
    assert {s.heads for s in sites if s.kind == "mha"} == {3}
    last = model.blocks[2].attn
    seen = {}
    last.register_forward_hook(lambda m, a, out: seen.update(x=a[0], out=out))
    with ActivationCapture(model, sites, stop_early=False) as cap, torch.no_grad():
        acts = cap(torch.randn(2, 3, 32, 32))
        ctx = acts["block2.mha"]
        assert (last.proj(ctx) - seen["out"]).abs().max() < 1e-5
        assert (ctx - per_head_reference(last, seen["x"], None)).abs().max() < 1e-5
