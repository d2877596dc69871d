"""End to end: MLM pre-training through the training core, exact resume, token-level SNP, order.

The token matrices are checked against the literal procedure of docs/methods.md section 4 at
masked positions (section 10): activations read from the Hugging Face model itself (its hidden
states, and a hook of our own on the attention projection's input), then node by node every
other readout input is zeroed and the stored readout rerun, averaged per true token.
"""

from __future__ import annotations

from collections import Counter

import mlflow
import numpy as np
import pytest
import torch
from _tiny import TINY_MLM, interrupted_and_resumed, kept_masked_positions

from statmech_nn import cli, snp, tracking
from statmech_nn.data import data_for_analysis
from statmech_nn.data.mlm import IGNORE_INDEX, MaskedTokens, masking_for
from statmech_nn.sites import resolve
from statmech_nn.train import TrainConfig, train

pytestmark = pytest.mark.requires("transformers")  # every test builds hf:bert-tiny-text

K = 8


def final_model(run_id: str) -> dict[str, torch.Tensor]:
    return tracking.read_run_checkpoint(run_id)[0]["model"]


def history(run_id: str, name: str) -> dict[int, float]:
    return {m.step: m.value for m in mlflow.MlflowClient().get_metric_history(run_id, name)}


@pytest.mark.slow
def test_a_resumed_mlm_run_ends_with_the_uninterrupted_weights(workdir):
    run_id, reference = interrupted_and_resumed(TrainConfig(epochs=3, seed=3, **TINY_MLM), "mlm")
    ours, theirs = final_model(run_id), final_model(reference)
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    for name in ("train_loss", "train_acc", "val_loss", "val_acc", "test_acc"):
        assert history(run_id, name) == history(reference, name)
    # not vacuous: the weights moved during the resumed epochs, and the seed matters
    epoch_one = tracking.read_run_checkpoint(run_id, 1)[0]["model"]
    assert any(not torch.equal(epoch_one[k], ours[k]) for k in ours)
    other = final_model(train(TrainConfig(epochs=1, seed=4, **TINY_MLM)))
    first = tracking.read_run_checkpoint(reference, 1)[0]["model"]
    assert any(not torch.equal(other[k], first[k]) for k in other)
    params = tracking.get_run(reference).data.params
    assert params["objective"] == "mlm" and params["mlm_probability"] == "0.15"


def literal_matrices(model, sites, weights, data, tokens):
    """Raw ``M_n[i, j]`` per site, node by node, and the readout accuracy, from HF's own outputs."""
    blocks = model.net.bert.encoder.layer
    heads_in: dict[int, torch.Tensor] = {}
    hooks = [
        blocks[i].attention.output.dense.register_forward_pre_hook(
            lambda m, args, i=i: heads_in.__setitem__(i, args[0].detach())
        )
        for i in range(len(blocks))
    ]
    positions = {s.name: [] for s in sites}
    truth = []
    try:
        for out, t, label in kept_masked_positions(model, data, tokens):
            truth.append(label)
            for s in sites:
                a = heads_in[s.layer] if s.kind == "mha" else out.hidden_states[s.layer + 1]
                positions[s.name].append(a[0, t].double())
    finally:
        for h in hooks:
            h.remove()
    truth_arr = np.asarray(truth)
    raw, accuracy = {}, {}
    for s in sites:
        w = weights[s.name].double()
        acts = torch.stack(positions[s.name])  # [P, N]
        nodes = acts.shape[1]
        m = np.zeros((nodes, K, K))
        for n in range(nodes):
            alone = torch.zeros_like(acts)
            alone[:, n] = acts[:, n]  # every other readout input silenced
            fields = (alone @ w.T).numpy()  # the readout rerun: [P, K]
            for i in range(K):
                m[n, i] = fields[truth_arr == i].mean(0)
        raw[s.name] = m
        accuracy[s.name] = float(((acts @ w.T).argmax(1).numpy() == truth_arr).mean())
    return raw, accuracy


def normalised(raw):
    top = raw.max(axis=(1, 2), keepdims=True)
    return np.where(top > 0, raw / np.where(top > 0, top, 1), 0.0)


@pytest.mark.slow
def test_mlm_run_then_token_snp_then_order(workdir, capsys, child_runs):
    run_id = train(TrainConfig(epochs=2, seed=0, **TINY_MLM))
    argv = ["snp", run_id, "--readout", "token", "--tokens", str(K), "--readout-epochs", "5"]
    argv += ["--readout-lr", "0.05", "--device", "cpu", "--no-progress"]
    assert cli.main(argv) == 0, capsys.readouterr().err
    snp_run_id = capsys.readouterr().out.strip().splitlines()[-1]
    (snp_run,) = child_runs(run_id, "snp")
    assert snp_run.info.run_id == snp_run_id
    assert snp_run.data.params["readout"] == "token" and snp_run.data.params["tokens"] == str(K)
    ds = snp.load_from_run(run_id)
    snp.validate(ds)
    assert ds.attrs["readout"] == "token" and ds.attrs["token_k"] == K
    assert ds.sizes["label_true"] == ds.sizes["label_out"] == K

    ckpt = tracking.load_checkpoint(run_id)
    data = data_for_analysis(ckpt.config)
    test = MaskedTokens(data.test, masking_for(data), seed=0, split="test")
    counts = Counter(int(t) for i in range(len(test)) for t in test[i][1] if t != IGNORE_INDEX)
    ranked = sorted(counts, key=lambda t: (-counts[t], t))[:K]
    tokens = [int(t) for t in ds.attrs["token_ids"]]
    assert tokens == ranked  # the K most frequent true tokens at the test split's masks
    names = [data.token_names[t] for t in tokens]
    assert list(ds.label_name_true.values) == names == list(ds.label_name_out.values)
    assert all(name.isalpha() and not name.startswith("[") for name in names)  # words
    assert ds.attrs["masked_positions"] == sum(counts.values())
    kept = sum(counts[t] for t in tokens)
    assert ds.attrs["left_out_positions"] == sum(counts.values()) - kept
    assert ds.count_label.values.tolist() == [counts[t] for t in tokens]

    sites = resolve(ckpt.model, "all")
    readouts = snp.load_readouts(snp_run_id, sites, device="cpu")
    weights = {name: r.fc.weight.detach() for name, r in readouts.items()}
    assert {tuple(w.shape) for w in weights.values()} == {(K, 32)}
    raw, accuracy = literal_matrices(ckpt.model.eval(), sites, weights, test, tokens)
    for s in sites:
        got = ds[f"snp_{s.kind}"].sel(layer=s.layer).values
        np.testing.assert_allclose(got, normalised(raw[s.name]), atol=2e-5)
        assert float(ds[f"acc_{s.kind}"].sel(layer=s.layer)) == pytest.approx(accuracy[s.name])
        metric = snp_run.data.metrics[f"acc.readout.{s.kind}.block{s.layer}"]
        assert metric == pytest.approx(accuracy[s.name])
    heads = ds.head_snp_mha.sel(layer=1).values  # a head's matrix is the sum of its nodes'
    head_raw = raw["block1.mha"].reshape(4, 8, K, K).sum(1)
    np.testing.assert_allclose(heads, normalised(head_raw), atol=2e-5)

    assert cli.main(["order", run_id, "--null-permutations", "20"]) == 0, capsys.readouterr().err
    (order_run,) = child_runs(run_id, "order")
    assert 0.0 <= order_run.data.metrics["order.Q.block1"] <= 1.0
    assert "snr.ff.block1" in order_run.data.metrics

    # a sample-label readout of this run is refused in one line
    assert cli.main(["snp", run_id, "--readout", "mean", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--readout token" in err[0]


@pytest.mark.slow
def test_token_snp_over_checkpoints_recomputes_the_stored_tensor(workdir, capsys, child_runs):
    """``order --over-checkpoints`` on a token SNP run: the settings read back from the stored
    tensor reproduce it at its own checkpoint, and Q is logged at every checkpoint."""
    from statmech_nn.order.checkpoints import snp_over_checkpoints, snp_settings

    run_id = train(TrainConfig(epochs=2, seed=0, checkpoint_every=1, **TINY_MLM))
    argv = ["snp", run_id, "--readout", "token", "--tokens", str(K), "--readout-epochs", "3"]
    assert cli.main([*argv, "--device", "cpu", "--no-progress"]) == 0, capsys.readouterr().err
    (snp_run,) = child_runs(run_id, "snp")
    ds = snp.load_from_run(run_id)
    settings = snp_settings(ds, dict(snp_run.data.params))
    assert settings["readout"] == "token" and settings["tokens"] == K
    ((epoch, again),) = list(snp_over_checkpoints(run_id, settings, epochs=[2], device="cpu"))
    assert epoch == 2 and list(again.attrs["token_ids"]) == list(ds.attrs["token_ids"])
    for kind in ("mha", "ff"):
        np.testing.assert_allclose(again[f"snp_{kind}"].values, ds[f"snp_{kind}"].values, atol=1e-6)

    order_argv = ["order", run_id, "--over-checkpoints", "--null-permutations", "10"]
    assert cli.main(order_argv) == 0, capsys.readouterr().err
    (order_run,) = child_runs(run_id, "order")
    assert sorted(history(order_run.info.run_id, "order.Q.block1")) == [0, 1, 2]
