"""Foreign models in the registry: sites, SNP against the literal reference, refusals, weights."""

from __future__ import annotations

import sys

import pytest
import torch
from torch.utils.data import TensorDataset

from statmech_nn import models, snp
from statmech_nn.errors import CheckpointError, ConfigError, UnknownNameError
from statmech_nn.foreign import INSTALL_HINT, MissingExtraError, load_foreign
from statmech_nn.readout import ReadoutConfig, train_readouts
from statmech_nn.sites import resolve

try:
    from statmech_nn.snp.reference import collect_activations, reference_matrices
except ImportError:
    from statmech_nn.snp_reference import collect_activations, reference_matrices

# The optional library each family of foreign models needs (torchvision is a dependency).
EXTRA = {"hf": "transformers", "timm": "timm"}
TINY_VITS = ["hf:vit-tiny-digits", "timm:vit-tiny-digits", "torchvision:vit-tiny-digits"]
LABELS = 4
needs_hf = pytest.mark.requires("transformers")
needs_timm = pytest.mark.requires("timm")


def by_library(*names: str | tuple[str, ...]) -> list:
    """Parameters that skip when the library of their model (the first value) is missing."""
    params = []
    for values in names:
        values = values if isinstance(values, tuple) else (values,)
        family = values[0].split(":")[0]
        marks = [pytest.mark.requires(EXTRA[family])] if family in EXTRA else []
        params.append(pytest.param(*values, marks=marks))
    return params


def images(n: int, seed: int) -> TensorDataset:
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % LABELS
    return TensorDataset(torch.randn(n, 3, 32, 32, generator=gen) + 0.3 * y[:, None, None, None], y)


@pytest.mark.parametrize("name", by_library(*TINY_VITS))
def test_registry_builds_trainable_classifiers_with_sites(name):
    model = models.create(name, num_classes=LABELS, img_size=32).eval()
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, LABELS)
    names = [s.name for s in resolve(model, "all")]
    assert names == ["block0.mha", "block0.ff", "block1.mha", "block1.ff"]
    assert [s.heads for s in resolve(model, "mha")] == [4, 4]
    rebuilt = models.from_config(model.config)
    models.load_weights(rebuilt, model.state_dict())
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(x), model(x))
    assert all(k.startswith("net.") for k in model.state_dict())


@pytest.mark.slow  # builds a 6-block BERT-base
@needs_hf
def test_bert6_is_the_nlp_ssb_encoder():
    model = models.create("hf:bert-6", num_classes=3)
    config = model.net.config
    shape = (config.num_hidden_layers, config.num_attention_heads, config.hidden_size)
    assert shape == (6, 12, 768)
    mha = resolve(model, "mha")
    assert [s.layer for s in mha] == list(range(6)) and {s.heads for s in mha} == {12}
    ids = torch.randint(2, 100, (2, 9))
    with torch.no_grad():
        assert model.eval()(ids).shape == (2, 3)


@pytest.mark.parametrize("name", by_library(*TINY_VITS))
def test_snp_of_foreign_mha_equals_the_reference(name):
    torch.manual_seed(0)
    model = models.create(name, num_classes=LABELS, img_size=32).eval()
    sites = resolve(model, "block1.mha,block0.ff")
    data = images(24, 1)
    config = ReadoutConfig(readout="seqpool", epochs=0)
    readouts = train_readouts(model, sites, images(8, 0), LABELS, config, "cpu", progress=False)
    acts, _ = collect_activations(model, sites, images(8, 0))
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for key, r in readouts.items():
            r.pool.weight.copy_(torch.randn(r.pool.weight.shape, generator=gen) / acts[key].std())
            r.pool.bias.fill_(0.25)
    fast = snp.matrices(model, readouts, data, LABELS, batch_size=8, device="cpu", progress=False)
    slow = reference_matrices(model, readouts, data, LABELS, "pre_pool", device="cpu")
    for key in readouts:
        rel = (fast[key].raw - slow[key].raw).abs().max() / slow[key].raw.abs().max()
        assert rel < 1e-5, (key, float(rel))
    heads = fast["block1.mha"].head_raw
    assert heads is not None and heads.shape[0] == 4
    h_rel = (heads - slow["block1.mha"].head_raw).abs().max() / heads.abs().max()
    assert h_rel < 1e-5


TV_ATTN = "net.encoder.layers.encoder_layer_1.self_attention"
REFUSED = [
    ("torchvision:vit-tiny-digits", "net.encoder.layers.encoder_layer_1.mlp:heads=4"),
    ("torchvision:vit-tiny-digits", "net.encoder.layers.encoder_layer_1.self_attention:heads=4"),
    ("torchvision:vit-tiny-digits", f"{TV_ATTN}.out_proj:input:heads=4"),
    ("timm:vit-tiny-digits", "net.blocks.1.attn.proj:heads=4"),
    ("timm:vit-tiny-digits", "net.blocks.1.mlp.fc2:heads=4"),
    ("hf:vit-tiny-digits", "net.vit.layers.1.attention.o_proj:heads=4"),
    ("hf:bert-tiny", "net.bert.encoder.layer.1.attention.output:heads=2"),
    # the residual stream: block outputs (the block{i}.ff modules) and the norms that read them
    ("torchvision:vit-tiny-digits", "net.encoder.layers.encoder_layer_1:heads=4"),
    ("torchvision:vit-tiny-digits", "net.encoder.layers.encoder_layer_1.ln_2:heads=4"),
    ("torchvision:vit-tiny-digits", "net.encoder.layers.encoder_layer_1.ln_1:input:heads=4"),
    ("timm:vit-tiny-digits", "net.blocks.1:heads=4"),
    ("timm:vit-tiny-digits", "net.blocks.1.norm2:heads=4"),
    ("hf:vit-tiny-digits", "net.vit.layers.1:heads=4"),
    ("hf:vit-tiny-digits", "net.vit.layers.1.layernorm_after:heads=4"),
    ("hf:vit-tiny-digits", "net.vit.layernorm:heads=4"),  # after the last block, block1
    ("hf:bert-tiny", "net.bert.encoder.layer.1:heads=2"),
    ("hf:bert-tiny", "net.bert.encoder.layer.1.output.LayerNorm:heads=2"),
    ("hf:bert-tiny", "net.bert.encoder.layer.1.attention.output.LayerNorm:heads=2"),
    ("cct_2_3x2_32", "classifier.blocks.1:heads=2"),  # ours: the block1.ff module
    ("cct_2_3x2_32", "classifier.blocks.1.norm1:input:heads=2"),
    ("cct_2_3x2_32", "classifier.blocks.1.attn_residual:heads=2"),  # ours: block1.attn_out
]  # fmt: skip


@pytest.mark.parametrize(("name", "spec"), by_library(*REFUSED))
def test_heads_on_post_projection_channels_are_refused(name, spec):
    model = models.create(name, num_classes=LABELS, img_size=32)
    with pytest.raises(ConfigError) as err:
        resolve(model, spec)
    message = str(err.value)
    assert "\n" not in message and "'block1.mha'" in message
    assert "(module " in message  # the site to use comes with its module path


PER_HEAD_CONTEXTS = [
    ("torchvision:vit-tiny-digits", f"{TV_ATTN}.heads_out:heads=4:kind=mha"),
    ("timm:vit-tiny-digits", "net.blocks.1.attn.proj:input:heads=4:kind=mha"),
    ("hf:vit-tiny-digits", "net.vit.layers.1.attention.o_proj:input:heads=4:kind=mha"),
    ("hf:bert-tiny", "net.bert.encoder.layer.1.attention.output.dense:input:heads=2:kind=mha"),
    ("cct_2_3x2_32", "classifier.blocks.1.self_attn.heads_out:heads=2:kind=mha"),
    ("cct_2_3x2_32", "classifier.blocks.1.self_attn.proj:input:heads=2:kind=mha"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "spec"), by_library(*PER_HEAD_CONTEXTS))
def test_heads_on_the_per_head_context_by_module_path_are_accepted(name, spec):
    model = models.create(name, num_classes=LABELS, img_size=32)
    (site,) = resolve(model, spec)
    (named,) = resolve(model, "block1.mha")
    assert site.heads == named.heads


@needs_timm
def test_heads_that_do_not_divide_the_width_are_refused_and_the_context_is_allowed():
    model = models.create("timm:vit-tiny-digits", num_classes=LABELS)
    with pytest.raises(ConfigError, match="32 channels do not split into 3"):
        resolve(model, "net.blocks.0.attn.proj:input:heads=3")
    (site,) = resolve(model, "net.blocks.0.attn.proj:input:heads=4:kind=mha")
    assert site.heads == 4 and site.hook == "input"
    assert resolve(model, "net.blocks.0.mlp")[0].heads is None  # no heads: nothing to refuse


def test_missing_extra_is_a_one_line_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # import now raises ImportError
    monkeypatch.setitem(sys.modules, "timm", None)
    for name in ("hf:bert-tiny", "timm:vit-tiny-digits"):
        with pytest.raises(MissingExtraError) as err:
            models.create(name)
        assert str(err.value).count("\n") == 0 and INSTALL_HINT in str(err.value)


@needs_hf
@needs_timm
def test_unknown_foreign_names():
    with pytest.raises(UnknownNameError, match="named config"):
        models.create("hf:no-such-model-here")
    with pytest.raises(UnknownNameError, match="unknown timm model"):
        models.create("timm:no_such_model")
    with pytest.raises(UnknownNameError, match="unknown torchvision model"):
        models.create("torchvision:no_such_model")
    with pytest.raises(UnknownNameError, match="foreign models"):
        models.create("keras:x")


@needs_hf
@needs_timm
def test_load_foreign_state_dicts_and_hf_directories(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(3)
    trained = models.create("hf:vit-tiny-digits", num_classes=LABELS).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = trained(x)
    raw = {k: v.contiguous() for k, v in trained.net.state_dict().items()}  # the library's keys
    save_file(raw, str(tmp_path / "w.safetensors"))
    torch.save(trained.state_dict(), tmp_path / "w.pt")  # ours, with the net. prefix
    trained.net.save_pretrained(tmp_path / "hfdir")
    for weights in ("w.safetensors", "w.pt", "hfdir"):
        model = load_foreign("hf:vit-tiny-digits", tmp_path / weights, num_classes=LABELS)
        with torch.no_grad():
            assert torch.allclose(model(x), expected, atol=1e-6), weights
        assert not model.training
    assert len(model.provenance["model"]) > 3
    again = load_foreign("hf:vit-tiny-digits", tmp_path / "w.pt", num_classes=LABELS)
    assert len(again.provenance["sha256"]) == 64
    torch.save({"net.bogus": torch.zeros(1)}, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="does not fit"):
        load_foreign("hf:vit-tiny-digits", tmp_path / "bad.pt", num_classes=LABELS)
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="not readable"):
        load_foreign("timm:vit-tiny-digits", tmp_path / "junk.pt")


@needs_timm
def test_the_heads_examples_of_the_help_and_errors_are_per_head_contexts(capsys):
    """The module-path examples with heads that the ``--sites`` help and the no-named-sites error
    give resolve, as written, on a timm ViT (whose per-head context they name), unrefused."""
    import re

    from timm.models.vision_transformer import VisionTransformer

    from statmech_nn import cli

    with pytest.raises(SystemExit):
        cli.main(["snp", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    with pytest.raises(UnknownNameError) as err:
        resolve(torch.nn.Sequential(torch.nn.Linear(2, 2)), "all")
    examples = re.findall(r"[\w.]+(?::\w+(?:=\d+)?)*:heads=\d+", help_text + " " + str(err.value))
    assert len(examples) >= 2, (help_text, str(err.value))
    vit = VisionTransformer(img_size=16, patch_size=8, embed_dim=32, depth=2, num_heads=4)
    (mha,) = resolve(vit, "block1.mha")
    for example in examples:
        (site,) = resolve(vit, example)
        assert (site.module, site.hook, site.heads) == (mha.module, mha.hook, mha.heads)
