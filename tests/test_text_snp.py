"""Text through the whole analysis: padding-masked readouts and SNP, fine-tuning, exact resume."""

from __future__ import annotations

import pytest
import torch
from _tiny import interrupted_and_resumed

pytest.importorskip("transformers")

from statmech_nn import data, models, snp  # noqa: E402
from statmech_nn.readout import ReadoutConfig, train_readouts  # noqa: E402
from statmech_nn.readout.modules import FlattenReadout  # noqa: E402
from statmech_nn.sites import resolve  # noqa: E402
from statmech_nn.snp.reference import reference_matrices  # noqa: E402

SMALL = dict(num_super=2, num_sub=2, n_train_per_class=12, n_test_per_class=6, max_words=12)
MODEL = "hf:bert-tiny-text"


def text(max_length: int):
    """The same small textsynth sentences padded to ``max_length`` tokens (none truncated)."""
    return data.load("textsynth", max_length=max_length, **SMALL)


def tiny_encoder(labels: int = 4) -> torch.nn.Module:
    torch.manual_seed(0)
    return models.create(MODEL, num_classes=labels).eval()


@pytest.mark.parametrize(
    ("readout", "silencing", "cache"),
    [
        ("mean", "pre_pool", "memory"),
        ("seqpool", "pre_pool", "memory"),
        ("seqpool", "post_pool", "none"),
        ("seqpool", "pre_pool", "batched"),
    ],
)
def test_appending_padding_changes_no_snp_matrix(readout, silencing, cache):
    model = tiny_encoder()
    short, long = text(16), text(40)
    assert short.train[0][0]["input_ids"].shape == (16,)
    assert int(short.train[0][0]["attention_mask"].sum()) < 16  # there is padding to begin with
    options = {"cache": "none"} if cache == "none" else {"cache_dtype": "fp32"}
    if cache == "batched":
        options["batched"] = True
    results = []
    for splits in (short, long):
        ds = snp.compute(
            model,
            splits,
            "all",
            readout=readout,
            silencing=silencing,
            readout_epochs=3,
            batch_size=16,
            device="cpu",
            progress=False,
            readout_options=options,
        )
        results.append(ds)
    a, b = results
    assert set(a.attrs["kinds"]) == {"mha", "ff"}
    for name in ("snp_mha", "snp_ff", "head_snp_mha", "acc_mha", "acc_ff"):
        x, y = torch.as_tensor(a[name].values), torch.as_tensor(b[name].values)
        assert torch.allclose(x, y, atol=2e-4, equal_nan=True), (name, float((x - y).abs().max()))


def test_flatten_reads_zeros_at_padding():
    """A flatten readout's weights at padded positions never reach a matrix."""
    model = tiny_encoder()
    short, long = text(16), text(24)
    sites = resolve(model, "block1.mha,block1.ff")
    config = ReadoutConfig(readout="flatten", epochs=2, batch_size=16, cache_dtype="fp32")
    trained = train_readouts(model, sites, short.train, 4, config, "cpu", progress=False)
    padded = {}
    gen = torch.Generator().manual_seed(1)
    for name, r in trained.items():
        wide = FlattenReadout(24, r.nodes, r.labels, r.site)
        weight = torch.randn(r.labels, r.nodes, 24, generator=gen)  # junk at padded positions
        weight[:, :, :16] = r.weight_jnt()
        with torch.no_grad():
            wide.fc.weight.copy_(weight.reshape(r.labels, -1))
        padded[name] = wide.eval()
    got = snp.matrices(model, trained, short.test, 4, device="cpu", progress=False)
    wide_got = snp.matrices(model, padded, long.test, 4, device="cpu", progress=False)
    for name in trained:
        x, y = got[name].raw, wide_got[name].raw
        assert torch.allclose(x, y, atol=1e-5 * float(x.abs().max())), name
        assert got[name].accuracy == wide_got[name].accuracy


@pytest.mark.parametrize(
    ("readout", "silencing"),
    [("seqpool", "pre_pool"), ("seqpool", "post_pool"), ("mean", "pre_pool"), ("flatten", "none")],
)
def test_text_mha_matrices_equal_the_literal_reference(readout, silencing):
    model = tiny_encoder()
    splits = text(20)
    sites = resolve(model, "block1.mha,block0.ff")
    assert sites[0].heads == 4
    config = ReadoutConfig(readout=readout, epochs=2, batch_size=16)
    readouts = train_readouts(model, sites, splits.train, 4, config, "cpu", progress=False)
    if readout == "seqpool":  # pooling weights far from the token mean
        gen = torch.Generator().manual_seed(7)
        with torch.no_grad():
            for r in readouts.values():
                r.pool.weight.copy_(torch.randn(r.pool.weight.shape, generator=gen))
                r.pool.bias.fill_(0.25)
    mode = "pre_pool" if silencing == "none" else silencing
    fast = snp.matrices(model, readouts, splits.test, 4, mode, batch_size=7, device="cpu",
                        progress=False)  # fmt: skip
    slow = reference_matrices(model, readouts, splits.test, 4, mode, device="cpu")
    for key in readouts:
        scale = slow[key].raw.abs().max()
        assert (fast[key].raw - slow[key].raw).abs().max() / scale < 1e-5, key
        assert fast[key].accuracy == pytest.approx(slow[key].accuracy)
    heads, ref_heads = fast["block1.mha"].head_raw, slow["block1.mha"].head_raw
    assert heads is not None and heads.shape[0] == 4
    assert (heads - ref_heads).abs().max() / ref_heads.abs().max() < 1e-5


def test_a_site_whose_positions_are_not_the_tokens_is_refused():
    from statmech_nn.errors import ConfigError
    from statmech_nn.readout.modules import site_mask

    mask = torch.ones(2, 5, dtype=torch.bool)
    assert site_mask(mask, torch.zeros(2, 5, 3)) is mask
    assert site_mask(mask, torch.zeros(2, 1, 3)) is None
    with pytest.raises(ConfigError, match="positions"):
        site_mask(mask, torch.zeros(2, 6, 3))


def test_text_batches_train_and_evaluate_through_the_training_step():
    from statmech_nn.train.steps import evaluate_on

    model = tiny_encoder()
    splits = text(16)
    loss, acc = evaluate_on(model, splits.test, torch.device("cpu"), batch_size=8)
    assert loss > 0 and 0 <= acc <= 1
    # the mask reaches the model: the same ids with a different mask give other logits
    x, _ = next(iter(torch.utils.data.DataLoader(splits.test, batch_size=4)))
    with torch.no_grad():
        masked = model(x["input_ids"], attention_mask=x["attention_mask"])
        unmasked = model(x["input_ids"], attention_mask=torch.ones_like(x["attention_mask"]))
    assert not torch.allclose(masked, unmasked)


def final_weights(run_id: str) -> dict[str, torch.Tensor]:
    from statmech_nn import tracking

    return tracking.read_run_checkpoint(run_id)[0]["model"]


def text_config(**overrides):
    from statmech_nn.train import TrainConfig

    values = dict(
        model=MODEL,
        dataset="textsynth",
        dataset_options={"max_length": 24},
        epochs=6,
        batch_size=32,
        lr=3e-3,
        warmup_epochs=0.5,
        device="cpu",
        amp=False,
        experiment="text",
    )
    return TrainConfig(**{**values, **overrides})


@pytest.mark.slow
def test_resumed_text_fine_tuning_gives_the_uninterrupted_weights(workdir):
    from statmech_nn import tracking

    config = text_config(epochs=2, dataset_options={"max_length": 24, **SMALL})
    run_id, reference = interrupted_and_resumed(config, "text")
    assert tracking.list_checkpoints(run_id) == [0, 1, 2]
    ours, theirs = final_weights(run_id), final_weights(reference)
    assert ours.keys() == theirs.keys()
    for key in ours:
        assert torch.equal(ours[key], theirs[key]), key
    untrained = tracking.read_run_checkpoint(run_id, 0)[0]["model"]
    assert not torch.equal(ours["net.classifier.weight"], untrained["net.classifier.weight"])


@pytest.mark.slow
def test_a_fine_tuned_encoder_reads_out_above_chance_at_its_last_layer(workdir, capsys):
    from statmech_nn import cli
    from statmech_nn.train import train

    run_id = train(text_config())
    args = ["snp", run_id, "--readout-epochs", "10", "--device", "cpu", "--no-progress"]
    assert cli.main(args) == 0, capsys.readouterr().err
    ds = snp.load_from_run(run_id)
    chance = 1 / 16
    assert float(ds["acc_ff"].sel(layer=1)) > 3 * chance
    assert float(ds["acc_mha"].sel(layer=1)) > 3 * chance
    assert ds.attrs["dataset"] == "textsynth"
    assert cli.main(["order", run_id, "--null-permutations", "20"]) == 0


@pytest.mark.parametrize("readout", ["seqpool", "mean", "flatten"])
def test_andc_features_of_text_ignore_padding(readout):
    """The ANDC cache's readout inputs of a padded sequence equal those of the bare sequence."""
    from statmech_nn.pruning.features import site_features

    gen = torch.Generator().manual_seed(0)
    a = torch.randn(3, 7, 4, generator=gen)
    lengths = [2, 5, 7]
    mask = torch.arange(7)[None, :] < torch.tensor(lengths)[:, None]
    w = torch.randn(5, 4, 7, generator=gen) if readout == "flatten" else torch.randn(5, 4)
    g, g0 = torch.randn(4, generator=gen), torch.tensor(0.3)
    got = site_features(a, readout, w, g, g0, mask=mask)
    for b, n in enumerate(lengths):
        bare = a[b : b + 1, :n]
        weight = w[:, :, :n] if readout == "flatten" else w
        want = site_features(bare, readout, weight, g, g0)
        row = got.inputs[:, b : b + 1] if readout == "flatten" else got.inputs[b : b + 1]
        assert torch.allclose(torch.as_tensor(row), torch.as_tensor(want.inputs), atol=1e-6)
