"""Models: reference parameter counts, equivalence with vit_pytorch's CCT, hook points, registry."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from statmech_nn import models
from statmech_nn.errors import CheckpointError, UnknownNameError

# name -> (num_classes, reference parameter count), docs/methods.md section 2.
REFERENCE_PARAMS = {
    "cct_2_3x2_32": (10, 0.284e6),
    "cct_4_3x2_32": (10, 0.482e6),
    "cct_7_3x2_32": (10, 3.853e6),
    "cct_7_3x1_32": (10, 3.760e6),
    "cct_14_7x2_224": (1000, 22.36e6),
}


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def capture(model: nn.Module, paths: list[str], x: torch.Tensor):
    """Forward ``x`` and return the outputs of the named submodules."""
    out: dict[str, torch.Tensor] = {}
    handles = [
        model.get_submodule(p).register_forward_hook(
            lambda _m, _i, o, p=p: out.__setitem__(p, o.detach())
        )
        for p in paths
    ]
    try:
        logits = model(x)
    finally:
        for h in handles:
            h.remove()
    return logits, out


def theirs(vit_cct, config: dict, positional_embedding: str) -> nn.Module:
    """vit_pytorch's CCT at the configuration of one of ours (its own kwarg names)."""
    return vit_cct.CCT(
        img_size=config["img_size"],
        embedding_dim=config["embedding_dim"],
        n_conv_layers=config["n_conv_layers"],
        kernel_size=config["kernel_size"],
        stride=config["stride"],
        padding=config["padding"],
        num_layers=config["num_layers"],
        num_heads=config["num_heads"],
        mlp_ratio=config["mlp_ratio"],
        num_classes=config["num_classes"],
        dropout_rate=config["dropout"],
        attention_dropout=config["attention_dropout"],
        stochastic_depth_rate=config["stochastic_depth"],
        positional_embedding=positional_embedding,
    )


@pytest.mark.parametrize("name", sorted(REFERENCE_PARAMS))
def test_parameter_counts_match_reference_table(name):
    classes, reference = REFERENCE_PARAMS[name]
    with torch.device("meta"):
        model = models.create(name, num_classes=classes)
    assert abs(n_params(model) - reference) / reference < 0.005


@pytest.mark.parametrize(
    ("name", "img_size", "tokens"),
    [
        ("cct_7_3x1_32", None, 16 * 16),
        ("cct_7_3x2_32", None, 8 * 8),
        ("cct_7_7x2_224", None, 14 * 14),
        ("cct_14_7x2_384", None, 24 * 24),
        ("cct_2_3x2_32", 64, 16 * 16),  # 64 -conv-> 64 -pool-> 32 -conv-> 32 -pool-> 16
        ("cct_7_3x1_32", 28, 14 * 14),
    ],
)
def test_token_counts(name, img_size, tokens):
    with torch.device("meta"):
        model = models.create(name, img_size=img_size)
    assert model.num_tokens == tokens
    assert model.classifier.positional_emb.shape == (1, tokens, model.config["embedding_dim"])


@pytest.mark.parametrize(
    ("name", "overrides", "pe"),
    [
        ("cct_2_3x2_32", {}, "sine"),
        ("cct_2_3x2_32", {}, "learnable"),
        ("cct_2_3x2_32", {}, "none"),
        # mlp_ratio 2, 4 heads: a cut-down CCT-7/3x1 (2 blocks, d=64, 16px).
        ("cct_7_3x1_32", {"num_layers": 2, "embedding_dim": 64, "img_size": 16}, "sine"),
        ("cct_7_3x1_32", {"num_layers": 2, "embedding_dim": 64, "img_size": 16}, "learnable"),
    ],
)
def test_same_logits_as_vit_pytorch(name, overrides, pe, vit_cct):
    torch.manual_seed(0)
    ours = models.create(name, positional_embedding=pe, **overrides).eval()
    ref = theirs(vit_cct, ours.config, pe).eval()
    assert (
        ours.config["mlp_ratio"]
        == ref.classifier.blocks[0].linear1.out_features / (ours.config["embedding_dim"])
    )
    models.load_weights(ours, ref.state_dict())
    x = torch.randn(3, 3, ours.config["img_size"], ours.config["img_size"])
    with torch.no_grad():
        expected = ref(x.clone())
        got = ours(x)
    assert got.shape == (3, 10)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


@pytest.mark.slow  # full-size CCT-7/3x1 forward and backward, twice
def test_full_cct_7_3x1_same_logits_and_gradients_as_vit_pytorch(vit_cct):
    """Training mode without stochastic parts: identical logits and parameter gradients."""
    torch.manual_seed(1)
    ours = models.create("cct_7_3x1_32", attention_dropout=0.0, stochastic_depth=0.0).train()
    ref = theirs(vit_cct, ours.config, "learnable").train()
    models.load_weights(ours, ref.state_dict())
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([3, 7])
    F.cross_entropy(ours(x), y).backward()
    F.cross_entropy(ref(x.clone()), y).backward()
    ref_grads = dict(ref.named_parameters())
    for key, p in ours.named_parameters():
        torch.testing.assert_close(p.grad, ref_grads[key].grad, atol=2e-5, rtol=1e-3)


def test_sine_table_is_the_reference_formula_and_frozen(vit_cct):
    model = models.create("cct_2_3x2_32", positional_embedding="sine")
    pe = model.classifier.positional_emb
    n, d = pe.shape[1:]
    slow = torch.empty(n, d, dtype=torch.float64)
    for p in range(n):
        for i in range(d):
            angle = p / 10000 ** (2 * (i // 2) / d)
            slow[p, i] = math.sin(angle) if i % 2 == 0 else math.cos(angle)
    torch.testing.assert_close(pe[0].double(), slow, atol=1e-5, rtol=0)
    torch.testing.assert_close(pe, vit_cct.sinusoidal_embedding(n, d), atol=0, rtol=0)
    assert not pe.requires_grad
    assert "classifier.positional_emb" in model.state_dict()


def test_no_positional_embedding():
    model = models.create("cct_2_3x2_32", positional_embedding="none")
    assert model.classifier.positional_emb is None
    assert "classifier.positional_emb" not in model.state_dict()


def test_structure_and_initialisation():
    torch.manual_seed(0)
    model = models.create("cct_7_3x1_32")
    keys = model.state_dict().keys()
    assert "tokenizer.conv_layers.0.0.weight" in keys
    assert "tokenizer.conv_layers.0.0.bias" not in keys
    assert "classifier.blocks.6.self_attn.qkv.weight" in keys
    assert "classifier.blocks.0.self_attn.qkv.bias" not in keys
    for key in ("pre_norm.weight", "self_attn.proj.bias", "norm1.bias", "linear1.weight"):
        assert f"classifier.blocks.3.{key}" in keys
    for key in ("norm.weight", "attention_pool.weight", "fc.bias"):
        assert f"classifier.{key}" in keys
    # learnable PE ~ trunc-normal std 0.2; linears std 0.02 with zero bias
    assert model.classifier.positional_emb.std().item() == pytest.approx(0.2, rel=0.02)
    assert model.classifier.blocks[2].linear1.weight.std().item() == pytest.approx(0.02, rel=0.03)
    assert torch.count_nonzero(model.classifier.blocks[2].linear1.bias) == 0
    conv = model.tokenizer.conv_layers[0][0].weight  # Kaiming normal: std sqrt(2 / fan_in)
    assert conv.std().item() == pytest.approx(math.sqrt(2 / 27), rel=0.05)
    # stochastic depth linear 0 -> 0.1 over 7 blocks; block 0 has none
    blocks = model.classifier.blocks
    assert isinstance(blocks[0].drop_path, nn.Identity)
    rates = [b.drop_path.drop_prob for b in list(blocks)[1:]]
    assert rates == pytest.approx([0.1 * i / 6 for i in range(1, 7)])


def test_attention_dropout_only_in_training():
    torch.manual_seed(0)
    a = models.create("cct_2_3x2_32", attention_dropout=0.5)
    b = models.create("cct_2_3x2_32", attention_dropout=0.0)
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 3, 32, 32)
    a.eval(), b.eval()
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x))
        a.train()
        assert not torch.allclose(a(x), b(x))


def test_drop_path_drops_whole_samples_and_keeps_the_mean():
    torch.manual_seed(0)
    drop = models.create("cct_2_3x2_32", stochastic_depth=0.5).classifier.blocks[1].drop_path
    assert drop.drop_prob == 0.5
    x = torch.ones(2000, 3, 4)
    drop.train()
    y = drop(x)
    per_sample = y.flatten(1)
    assert ((per_sample == 0).all(1) | (per_sample == 2.0).all(1)).all()
    assert abs((per_sample[:, 0] == 0).float().mean().item() - 0.5) < 0.05
    drop.eval()
    assert torch.equal(drop(x), x)


def small_cct() -> nn.Module:
    torch.manual_seed(0)
    return models.create("cct_7_3x1_32", num_layers=2, embedding_dim=64, img_size=16).eval()


def test_sites_exist_with_documented_shapes():
    model = small_cct()
    sites = model.sites()
    assert [s.name for s in sites[:4]] == [
        "block0.mha",
        "block0.attn_out",
        "block0.ff_hidden",
        "block0.ff",
    ]
    assert len(sites) == 4 * 2
    x = torch.randn(2, 3, 16, 16)
    _, out = capture(model, [s.module for s in sites], x)
    n, d = model.num_tokens, 64
    width = {"mha": d, "attn_out": d, "ff_hidden": 2 * d, "ff": d}
    for site in sites:
        assert site.hook == "output" and site.layout == "tokens"
        assert out[site.module].shape == (2, n, width[site.kind])
        assert site.heads == (4 if site.kind == "mha" else None)
        assert site.module.startswith(f"classifier.blocks.{site.layer}")


def test_mha_site_is_heads_before_projection():
    """Slow per-head attention reproduces ``heads_out``; ``proj`` of it gives the sub-block."""
    model = small_cct()
    block = model.classifier.blocks[1]
    x = torch.randn(2, 3, 16, 16)
    paths = ["classifier.blocks.0", "classifier.blocks.1.self_attn.heads_out"]
    paths += ["classifier.blocks.1.attn_residual", "classifier.blocks.1.mlp_act"]
    with torch.no_grad():
        _, out = capture(model, paths, x)
        stream = out["classifier.blocks.0"]
        heads_out = out["classifier.blocks.1.self_attn.heads_out"]
        h = block.pre_norm(stream)
        q, k, v = block.self_attn.qkv.weight.chunk(3, dim=0)
        dh = 64 // 4
        for head in range(4):
            rows = slice(head * dh, (head + 1) * dh)
            qh, kh, vh = h @ q[rows].T, h @ k[rows].T, h @ v[rows].T
            probs = torch.softmax(qh @ kh.transpose(1, 2) / math.sqrt(dh), dim=-1)
            torch.testing.assert_close(heads_out[..., rows], probs @ vh, atol=1e-5, rtol=1e-4)
        residual = out["classifier.blocks.1.attn_residual"]
        torch.testing.assert_close(residual, stream + block.self_attn.proj(heads_out))
        hidden = out["classifier.blocks.1.mlp_act"]
        torch.testing.assert_close(hidden, F.gelu(block.linear1(block.norm1(residual))))


def test_proj_is_linear_in_heads():
    """The attention output is the sum over heads of proj applied to each head's channels."""
    model = small_cct()
    block = model.classifier.blocks[0]
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        _, out = capture(model, ["classifier.blocks.0.self_attn.heads_out"], x)
        heads_out = out["classifier.blocks.0.self_attn.heads_out"]
        total = block.self_attn.proj.bias.expand_as(heads_out).clone()
        for head in range(4):
            masked = torch.zeros_like(heads_out)
            masked[..., head * 16 : (head + 1) * 16] = heads_out[..., head * 16 : (head + 1) * 16]
            total += masked @ block.self_attn.proj.weight.T
        torch.testing.assert_close(total, block.self_attn.proj(heads_out), atol=1e-5, rtol=1e-5)


def test_config_roundtrip_rebuilds_the_same_model():
    model = models.create("cct_2_3x2_32", num_classes=7, positional_embedding="sine", dropout=0.05)
    config = json.loads(json.dumps(model.config))
    assert config["name"] == "cct_2_3x2_32" and config["num_classes"] == 7
    rebuilt = models.from_config(config)
    assert rebuilt.config == model.config
    models.load_weights(rebuilt, model.state_dict())
    x = torch.randn(2, 3, 32, 32)
    model.eval(), rebuilt.eval()
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), model(x))


def test_unknown_names_suggest_close_matches():
    with pytest.raises(UnknownNameError, match="cct_7_3x1_32"):
        models.create("cct_7_3x1")
    with pytest.raises(UnknownNameError, match="sine"):
        models.create("cct_2_3x2_32", positional_embedding="sin")
    with pytest.raises(UnknownNameError, match="attention_dropout"):
        models.create("cct_2_3x2_32", attention_dropot=0.0)
    with pytest.raises(UnknownNameError, match="positional"):
        models.create("vgg11_bn_cifar", positional_embedding="sine")
    expected = {f"cct_{v}" for v in ("2_3x2_32", "7_3x1_32", "14_7x2_384")}
    assert expected | {"vgg11_bn_cifar", "vgg16_bn_cifar"} <= set(models.names())


def test_register_decorator_adds_a_name(monkeypatch):
    from statmech_nn.models import registry

    monkeypatch.setattr(registry, "_BUILDERS", dict(registry._BUILDERS))
    monkeypatch.setattr(registry, "_ACCEPTS", dict(registry._ACCEPTS))

    @models.register
    def tiny_test_model(num_classes: int = 10, img_size: int | None = None) -> nn.Module:
        model = nn.Linear(4, num_classes)
        model.config = {"name": "tiny_test_model", "num_classes": num_classes}
        return model

    assert "tiny_test_model" in models.names()
    assert models.create("tiny_test_model", num_classes=3).out_features == 3
    with pytest.raises(ValueError, match="already registered"):
        models.register(tiny_test_model)


def test_load_weights_names_the_differences():
    model = models.create("cct_2_3x2_32")
    state = dict(models.create("cct_2_3x2_32", num_classes=100).state_dict())
    del state["classifier.norm.weight"]
    state["classifier.extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError) as info:
        models.load_weights(model, state)
    message = str(info.value)
    assert "1 missing keys: classifier.norm.weight" in message
    assert "1 unexpected keys: classifier.extra.weight" in message
    assert "2 shape mismatches" in message
    assert "classifier.fc.weight (checkpoint (100, 128), model (10, 128))" in message


def test_load_weights_truncates_long_lists():
    model = models.create("cct_2_3x2_32")
    state = {k: v for k, v in model.state_dict().items() if "blocks" not in k}
    missing = len(model.state_dict()) - len(state)
    with pytest.raises(CheckpointError, match=rf"{missing} missing keys: .*\({missing - 5} more\)"):
        models.load_weights(model, state)


@pytest.mark.parametrize(
    ("name", "sides"),
    [
        ("vgg11_bn_cifar", [32, 16, 8, 8, 4, 4, 2, 2]),
        ("vgg16_bn_cifar", [32, 32, 16, 16, 8, 8, 8, 4, 4, 4, 2, 2, 2]),
    ],
)
def test_vgg_forward_and_sites(name, sides):
    torch.manual_seed(0)
    model = models.create(name, num_classes=5).eval()
    sites = model.sites()
    assert [s.name for s in sites] == [f"conv{k}" for k in range(len(sides))]
    x = torch.randn(2, 3, 32, 32)
    logits, out = capture(model, [s.module for s in sites], x)
    assert logits.shape == (2, 5)
    widths = [w for w in model.config["widths"] if w != "M"]
    for site, side, width in zip(sites, sides, widths, strict=True):
        assert site.kind == "conv" and site.layout == "channels_first" and site.heads is None
        assert isinstance(model.get_submodule(site.module), nn.ReLU)
        assert out[site.module].shape == (2, width, side, side)
        assert (out[site.module] >= 0).all()
    assert models.from_config(json.loads(json.dumps(model.config))).config == model.config


def test_vgg_other_image_size():
    model = models.create("vgg11_bn_cifar", img_size=64, num_classes=3).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 3)


def test_models_command_lists_every_model(capsys):
    from statmech_nn.cli import main

    assert main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["name", "params(M)", "img", "tokens", "layers", "heads", "d"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert set(rows) == set(models.names())
    assert rows["cct_7_3x1_32"][1:] == ["3.760", "32", "256", "7", "4", "256"]


# -- attention kernels: SDPA (flash) and explicit matmuls compute the same function ------------


def _attention_pair(dtype: torch.dtype = torch.float32) -> tuple[nn.Module, nn.Module]:
    """Two copies of one small CCT, the first forced to SDPA, the second to explicit matmuls."""
    from statmech_nn.models.cct import set_attention_path

    torch.manual_seed(0)
    config = {"num_layers": 2, "embedding_dim": 64, "img_size": 16, "num_classes": 7}
    config.update(attention_dropout=0.0, stochastic_depth=0.0)
    sdpa = models.create("cct_7_3x1_32", **config).eval().to(dtype)
    matmul = models.create("cct_7_3x1_32", **config).eval().to(dtype)
    matmul.load_state_dict(sdpa.state_dict())
    set_attention_path(sdpa, "sdpa")
    set_attention_path(matmul, "matmul")
    return sdpa, matmul


def _site_modules(model: nn.Module) -> list[str]:
    return [site.module for site in model.sites()]


def test_attention_paths_agree_in_fp32_at_every_hook_point():
    sdpa, matmul = _attention_pair()
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits_a, hooks_a = capture(sdpa, _site_modules(sdpa), x)
        logits_b, hooks_b = capture(matmul, _site_modules(matmul), x)
    torch.testing.assert_close(logits_b, logits_a, rtol=1e-5, atol=1e-5)
    for name, value in hooks_a.items():
        torch.testing.assert_close(hooks_b[name], value, rtol=1e-5, atol=1e-5, msg=name)
    assert any(name.endswith("heads_out") for name in hooks_a)


def test_auto_path_in_fp32_is_sdpa_bit_for_bit():
    """fp32 on CPU keeps SDPA: the hook outputs are exactly those of the forced SDPA path."""
    sdpa, _ = _attention_pair()
    auto = models.from_config(sdpa.config).eval()
    auto.load_state_dict(sdpa.state_dict())
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        logits_a, hooks_a = capture(sdpa, _site_modules(sdpa), x)
        logits_b, hooks_b = capture(auto, _site_modules(auto), x)
    assert torch.equal(logits_a, logits_b)
    assert all(torch.equal(hooks_b[name], value) for name, value in hooks_a.items())


@pytest.mark.parametrize("mode", ["bf16_weights", "bf16_autocast"])
def test_attention_paths_agree_in_bf16(mode):
    """Both bf16 paths stay within bf16 tolerance of each other and of the fp32 logits."""
    weights = torch.bfloat16 if mode == "bf16_weights" else torch.float32
    sdpa, matmul = _attention_pair(weights)
    reference, _ = _attention_pair()
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        exact = reference(x)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode == "bf16_autocast"):
            a, b = sdpa(x.to(weights)).float(), matmul(x.to(weights)).float()
    scale = exact.abs().max()
    for got in (a, b):
        assert (got - exact).abs().max() <= 0.05 * scale
    assert (a - b).abs().max() <= 0.05 * scale


def test_attention_path_rule(monkeypatch):
    from statmech_nn.errors import ConfigError
    from statmech_nn.models import attention, cct

    q32 = torch.zeros(1, 1, 2, 4)
    q16 = q32.to(torch.bfloat16)
    meta = torch.zeros(1, 1, 2, 4, dtype=torch.bfloat16, device="meta")
    monkeypatch.setattr(attention, "native_bf16_cpu", lambda: True)
    assert cct.uses_matmul_attention(q16)
    assert not cct.uses_matmul_attention(q32) and not cct.uses_matmul_attention(meta)
    assert not cct.uses_matmul_attention(q16.half())
    assert not cct.uses_matmul_attention(q16, "sdpa") and cct.uses_matmul_attention(q32, "matmul")
    monkeypatch.setattr(attention, "native_bf16_cpu", lambda: False)
    assert not cct.uses_matmul_attention(q16)
    with pytest.raises(ConfigError, match="attention path"):
        cct.set_attention_path(nn.Sequential(), "flash")


def test_matmul_attention_dropout_only_in_training():
    sdpa, matmul = _attention_pair()
    for module in matmul.modules():
        if isinstance(module, models.cct.Attention):
            module.attention_dropout = 0.5
    heads_out = ["classifier.blocks.0.self_attn.heads_out"]
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        torch.testing.assert_close(matmul(x), sdpa(x), rtol=1e-5, atol=1e-5)
        _, plain = capture(sdpa.train(), heads_out, x)  # no other dropout: train mode is a no-op
        _, dropped = capture(matmul.train(), heads_out, x)
    plain, dropped = plain[heads_out[0]], dropped[heads_out[0]]
    assert (dropped - plain).abs().max() > 0.1 * plain.abs().max()
