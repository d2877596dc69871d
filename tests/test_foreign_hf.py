"""Per-head capture of Hugging Face transformers (BERT, RoBERTa, DistilBERT, GPT-2, ViT, DeiT).

References are the library's own: the attention module's own output (with its projection, and
for BERT / RoBERTa its residual LayerNorm) and its eager attention weights times its value
projection, split into heads by the documented ``view(B, T, heads, head_dim)``.
"""

from __future__ import annotations

import os

import pytest
import torch

from statmech_nn.foreign import find_blocks
from statmech_nn.sites import ActivationCapture

transformers = pytest.importorskip("transformers")

TEXT = {
    "bert": lambda: transformers.BertConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=32, max_position_embeddings=32,
    ),
    "roberta": lambda: transformers.RobertaConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=32, max_position_embeddings=40, pad_token_id=1,
    ),
    "distilbert": lambda: transformers.DistilBertConfig(
        vocab_size=50, dim=16, n_layers=2, n_heads=4, hidden_dim=32, max_position_embeddings=32
    ),
    "gpt2": lambda: transformers.GPT2Config(
        vocab_size=50, n_embd=16, n_layer=2, n_head=4, n_positions=32, pad_token_id=0,
        bos_token_id=1, eos_token_id=1,
    ),
}  # fmt: skip
VISION = {
    "vit": lambda size: transformers.ViTConfig(
        image_size=size, patch_size=4, num_channels=3, hidden_size=16, num_hidden_layers=2,
        num_attention_heads=4, intermediate_size=32,
    ),
    "deit": lambda size: transformers.DeiTConfig(
        image_size=size, patch_size=4, num_channels=3, hidden_size=16, num_hidden_layers=2,
        num_attention_heads=4, intermediate_size=32,
    ),
}  # fmt: skip
TEXT_MODELS = {
    "bert": "BertForSequenceClassification",
    "roberta": "RobertaForSequenceClassification",
    "distilbert": "DistilBertForSequenceClassification",
    "gpt2": "GPT2ForSequenceClassification",
}
VISION_MODELS = {"vit": "ViTForImageClassification", "deit": "DeiTForImageClassification"}


def build(cls_name: str, config, implementation: str):
    config._attn_implementation = implementation
    torch.manual_seed(0)
    return getattr(transformers, cls_name)(config).eval()


def values_of(attn, hidden: torch.Tensor) -> torch.Tensor:
    """The attention's value projection ``[B, T, d]`` (the library's own modules)."""
    if hasattr(attn, "self"):
        return attn.self.value(hidden)
    if hasattr(attn, "v_lin"):
        return attn.v_lin(hidden)
    if hasattr(attn, "v_proj"):
        return attn.v_proj(hidden)
    return attn.c_attn(hidden).split(attn.embed_dim, dim=2)[2]  # GPT-2


def projected(attn, point, ctx: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
    """The attention module's output recomputed from the captured context by its own modules."""
    if point.module == "output.dense":
        return attn.output(ctx, hidden)  # dense, dropout, LayerNorm(. + hidden)
    return attn.get_submodule(point.module)(ctx)


def check(model, inputs: dict, valid: torch.Tensor | None, eager: bool) -> None:
    blocks = find_blocks(model)
    assert [b.index for b in blocks] == [0, 1]
    sites = [s for b in blocks for s in b.sites(dict(model.named_modules()))]
    seen: dict[int, dict] = {}
    for block in blocks:
        attn = model.get_submodule(block.attention)
        attn.register_forward_hook(
            lambda m, a, kw, out, i=block.index: seen.update(
                {i: {"hidden": (a[0] if a else kw["hidden_states"]), "out": out}}
            ),
            with_kwargs=True,
        )
    with ActivationCapture(model, sites, stop_early=False) as cap, torch.no_grad():
        forward = model.forward
        model.forward = lambda x: forward(**inputs)  # type: ignore[method-assign]
        try:
            acts = cap(torch.zeros(1))
        finally:
            del model.forward
        for block in blocks:
            attn = model.get_submodule(block.attention)
            ctx = acts[f"block{block.index}.mha"]
            hidden, (out, weights) = seen[block.index]["hidden"], seen[block.index]["out"]
            diff = (projected(attn, block.point, ctx, hidden) - out).abs()
            assert (diff if valid is None else diff[valid]).max() < 1e-5
            assert block.point.heads == 4
            if eager:  # the library's own weights: channel c is head c // head_dim
                v = values_of(attn, hidden)
                b, t, d = v.shape
                vh = v.view(b, t, 4, d // 4).transpose(1, 2)
                ref = (weights @ vh).transpose(1, 2).reshape(b, t, d)
                diff = (ctx - ref).abs()
                assert (diff if valid is None else diff[valid]).max() < 1e-5


@pytest.mark.parametrize("family", sorted(TEXT))
@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
@pytest.mark.parametrize("length", [5, 11])
@pytest.mark.parametrize("padded", [False, True])
def test_text_models(family, implementation, length, padded):
    model = build(TEXT_MODELS[family], TEXT[family](), implementation)
    gen = torch.Generator().manual_seed(length)
    ids = torch.randint(2, 50, (3, length), generator=gen)
    mask = torch.ones(3, length, dtype=torch.long)
    if padded:
        mask[0, length - 3 :] = 0
        mask[1, length - 1 :] = 0
    valid = mask.bool() if padded else None
    inputs = {"input_ids": ids, "attention_mask": mask}
    check(model, inputs, valid, eager=implementation == "eager")


@pytest.mark.parametrize("family", sorted(VISION))
@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
@pytest.mark.parametrize("size", [8, 16])
def test_vision_models(family, implementation, size):
    model = build(VISION_MODELS[family], VISION[family](size), implementation)
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(size))
    check(model, {"pixel_values": x}, None, eager=implementation == "eager")


def test_sdpa_and_eager_capture_the_same_heads():
    config = TEXT["bert"]()
    ids = torch.randint(2, 50, (2, 7), generator=torch.Generator().manual_seed(3))
    out = {}
    for implementation in ("eager", "sdpa"):
        model = build(TEXT_MODELS["bert"], config, implementation)
        sites = [s for b in find_blocks(model) for s in b.sites(dict(model.named_modules()))]
        with ActivationCapture(model, sites[:1]) as cap, torch.no_grad():
            out[implementation] = cap(ids)["block0.mha"]
    assert (out["eager"] - out["sdpa"]).abs().max() < 1e-5


def test_the_hub_is_offline_at_test_time():
    """conftest sets HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE before any library reads them."""
    from huggingface_hub import constants

    assert constants.HF_HUB_OFFLINE
    assert os.environ["TRANSFORMERS_OFFLINE"] == "1"
