"""Sites: spec resolution, hook capture layouts, early stop, and models we did not write."""

from __future__ import annotations

import pytest
import torch
from _tiny import tiny_cct
from torch import nn

from statmech_nn.errors import UnknownNameError
from statmech_nn.models.cct import CCT
from statmech_nn.sites import (
    ActivationCapture,
    Site,
    SiteNotReachedError,
    auto_sites,
    layer_label,
    parse_spec,
    resolve,
    to_tokens,
)


def vit_cct_from(ours: CCT):
    cct = pytest.importorskip("vit_pytorch.cct")
    cfg = ours.config
    theirs = cct.CCT(
        img_size=cfg["img_size"],
        embedding_dim=cfg["embedding_dim"],
        num_layers=cfg["num_layers"],
        num_heads=cfg["num_heads"],
        mlp_ratio=cfg["mlp_ratio"],
        num_classes=cfg["num_classes"],
        kernel_size=3,
        stride=1,
        padding=1,
        n_conv_layers=cfg["n_conv_layers"],
        positional_embedding="learnable",
        attention_dropout=0.0,
        stochastic_depth_rate=0.0,
    )
    theirs.load_state_dict(ours.state_dict())
    return theirs.eval()


class TinyVGG(nn.Module):
    """A torchvision-built VGG feature stack (in-place ReLUs) with a small head."""

    def __init__(self) -> None:
        super().__init__()
        from torchvision.models.vgg import make_layers

        torch.manual_seed(0)
        self.features = make_layers([4, "M", 6], batch_norm=True)
        self.head = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean((2, 3)))


def test_parse_spec_splits_and_rejects_empty():
    assert parse_spec(" mha , ff ") == ["mha", "ff"]
    assert parse_spec(["block0.mha"]) == ["block0.mha"]
    with pytest.raises(UnknownNameError):
        parse_spec(" , ")


def test_resolve_names_kinds_prefixes_and_all():
    model = tiny_cct()
    assert [s.name for s in resolve(model, "all")] == [s.name for s in model.sites()]
    assert [s.name for s in resolve(model, "mha")] == ["block0.mha", "block1.mha"]
    assert [s.name for s in resolve(model, "block1")] == [
        "block1.mha",
        "block1.attn_out",
        "block1.ff_hidden",
        "block1.ff",
    ]
    assert [s.name for s in resolve(model, "ff,block0.ff")] == ["block0.ff", "block1.ff"]
    mha = resolve(model, "block1.mha")[0]
    assert (mha.kind, mha.layer, mha.heads) == ("mha", 1, 2)


def test_resolve_module_path_with_options():
    model = tiny_cct()
    site = resolve(model, "classifier.blocks.1.linear1:heads=4:kind=hid:layer=3:input")[0]
    assert site == Site(
        "classifier.blocks.1.linear1", "hid", 3, "classifier.blocks.1.linear1", "input", "auto", 4
    )
    two = resolve(model, "classifier.blocks.0,classifier.blocks.1")
    assert [(s.kind, s.layer) for s in two] == [("module", 0), ("module", 1)]


def test_unknown_site_lists_the_available_ones():
    with pytest.raises(UnknownNameError) as err:
        resolve(tiny_cct(), "block7.mha")
    message = str(err.value)
    assert "block0.mha" in message and "ff_hidden" in message and "module path" in message
    with pytest.raises(UnknownNameError, match="site option"):
        resolve(tiny_cct(), "classifier.blocks.0:frobnicate")
    with pytest.raises(UnknownNameError, match="bad value"):
        resolve(tiny_cct(), "classifier.blocks.0:heads=zero")
    with pytest.raises(UnknownNameError, match="share kind and layer"):
        resolve(tiny_cct(), "classifier.blocks.0:layer=0,classifier.blocks.1:layer=0")
    with pytest.raises(UnknownNameError, match="no named sites"):
        resolve(nn.Sequential(nn.Linear(2, 2)), "all")


def test_to_tokens_layouts():
    t = torch.arange(2 * 3 * 4 * 5.0).view(2, 3, 4, 5)
    cf = to_tokens(t, "channels_first")
    assert cf.shape == (2, 20, 3)
    assert torch.equal(cf[1, 7], t[1, :, 7 // 5, 7 % 5])
    assert torch.equal(to_tokens(t, "auto"), cf)
    assert to_tokens(torch.ones(2, 6), "tokens").shape == (2, 1, 6)
    assert to_tokens(t, "tokens").shape == (2, 12, 5)
    seq = torch.randn(2, 7, 3)
    assert torch.equal(to_tokens(seq, "tokens"), seq)
    assert torch.equal(to_tokens(seq, "channels_first"), seq.transpose(1, 2))


def test_capture_matches_manual_forward_and_stops_early():
    model = tiny_cct()
    x = torch.randn(3, 3, 16, 16)
    calls = []
    model.classifier.fc.register_forward_hook(lambda *a: calls.append(1))
    with ActivationCapture(model, resolve(model, "block0.mha,block0.ff")) as cap, torch.no_grad():
        acts = cap(x)
    assert calls == []
    with torch.no_grad():
        tokens = model.tokenizer(x) + model.classifier.positional_emb
        block = model.classifier.blocks[0]
        h = block.self_attn.qkv(block.pre_norm(tokens))
    assert acts["block0.mha"].shape == (3, model.num_tokens, 8)
    assert acts["block0.ff"].shape == (3, model.num_tokens, 8)
    assert h.shape[-1] == 24
    with torch.no_grad():
        full = block(tokens)
    torch.testing.assert_close(acts["block0.ff"], full)
    with (
        ActivationCapture(model, resolve(model, "block0.ff"), stop_early=False) as cap,
        torch.no_grad(),
    ):
        cap(x)
    assert calls == [1]


def test_capture_is_not_aliased_with_in_place_changes():
    model = TinyVGG().eval()
    x = torch.randn(2, 3, 8, 8)
    site = resolve(model, "features.1:kind=bn")[0]
    with ActivationCapture(model, [site], stop_early=False) as cap, torch.no_grad():
        got = cap(x)["features.1"]
        expected = model.features[1](model.features[0](x))
    assert (got < 0).any(), "the in-place ReLU after the BatchNorm must not reach the capture"
    torch.testing.assert_close(got, to_tokens(expected, "channels_first"))


def test_unreached_site_raises():
    model = TinyVGG().eval()
    model.unused = nn.Linear(3, 3)
    with (
        ActivationCapture(model, resolve(model, "unused")) as cap,
        pytest.raises(SiteNotReachedError),
    ):
        cap(torch.randn(1, 3, 8, 8))


def test_vit_pytorch_cct_auto_sites_give_our_activations():
    ours = tiny_cct()
    theirs = vit_cct_from(ours)
    ours_sites, their_sites = resolve(ours, "all"), resolve(theirs, "all")
    assert [s.name for s in ours_sites] == [s.name for s in their_sites]
    assert [s.heads for s in their_sites if s.kind == "mha"] == [2, 2]
    x = torch.randn(2, 3, 16, 16)
    with (
        ActivationCapture(ours, ours_sites) as a,
        ActivationCapture(theirs, their_sites) as b,
        torch.no_grad(),
    ):
        mine, other = a(x), b(x)
    for name in mine:
        torch.testing.assert_close(mine[name], other[name], rtol=1e-5, atol=1e-5)


def test_torchvision_vgg_features_get_conv_sites():
    model = TinyVGG().eval()
    sites = auto_sites(model)
    assert [(s.name, s.module, s.layout) for s in sites] == [
        ("conv0", "features.2", "channels_first"),
        ("conv1", "features.6", "channels_first"),
    ]
    with ActivationCapture(model, sites) as cap, torch.no_grad():
        acts = cap(torch.randn(2, 3, 8, 8))
    assert acts["conv0"].shape == (2, 64, 4) and acts["conv1"].shape == (2, 16, 6)
    assert layer_label(sites[1]) == "conv1"


def test_torchvision_vision_transformer_module_sites():
    from torchvision.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    model = VisionTransformer(
        image_size=16,
        patch_size=8,
        num_layers=2,
        num_heads=2,
        hidden_dim=8,
        mlp_dim=16,
        num_classes=3,
    ).eval()
    sites = resolve(
        model,
        "encoder.layers.encoder_layer_1:kind=block,encoder.layers.encoder_layer_0.mlp:kind=mlp",
    )
    with ActivationCapture(model, sites) as cap, torch.no_grad():
        acts = cap(torch.randn(2, 3, 16, 16))
    assert acts["encoder.layers.encoder_layer_1"].shape == (2, 5, 8)
    assert acts["encoder.layers.encoder_layer_0.mlp"].shape == (2, 5, 8)
    assert layer_label(sites[0]) == "layer0"
