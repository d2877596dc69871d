"""Cooperation on a token-level SNP run of a masked-LM pre-training run (methods sections 10, 11).

The reference is literal: the block output read from the Hugging Face model's own hidden states
at the masked positions of the run's masks (rebuilt here from the seed), labels the index of the
true token among the SNP run's ``K``, and a bias-free ``Linear`` trained by a plain SGD loop with
the SNP run's readout settings.
"""

from __future__ import annotations

import json
import math

import mlflow
import numpy as np
import pytest
import torch
from _tiny import TINY_MLM, kept_masked_positions
from torch.nn import functional as F

from statmech_nn import cli, cooperation_run, snp, tracking
from statmech_nn.cooperation import draw_seed
from statmech_nn.cooperation_sources import feature_form, snp_sources, token_readouts
from statmech_nn.data import data_for_analysis
from statmech_nn.data.mlm import MaskedTokens, masking_for
from statmech_nn.errors import ConfigError
from statmech_nn.sites import resolve
from statmech_nn.train import TrainConfig, train

TINY = {  # more training text than the shared config, so the readouts have something to learn
    **TINY_MLM,
    "dataset_options": {"max_length": 16, "n_train_per_class": 24, "n_test_per_class": 6},
}
K = 8
LAYER = 1
NODES = 32
THETA = 0.3


def test_token_runs_always_read_one_position_per_sample():
    assert feature_form("token", "auto") == feature_form("token", "pooled") == "pooled"
    with pytest.raises(ConfigError, match="one masked position"):
        feature_form("token", "tokens")


def literal_positions(model, data, tokens):
    """``([P, N] block-LAYER outputs, [P] labels)`` at the masked positions of the K tokens."""
    acts, labels = [], []
    for out, t, label in kept_masked_positions(model, data, tokens):
        acts.append(out.hidden_states[LAYER + 1][0, t])
        labels.append(label)
    return torch.stack(acts), torch.as_tensor(labels)


def literal_readout(x, y, config, seed):
    """``W [K, N]``: bias-free softmax regression, SGD (Nesterov, weight decay), cosine per step."""
    gen = torch.Generator().manual_seed(seed)
    bound = 1.0 / math.sqrt(x.shape[1])
    w = (torch.rand((K, x.shape[1]), generator=gen) * 2 * bound - bound).requires_grad_(True)
    opt = torch.optim.SGD(
        [w],
        lr=config["lr"],
        momentum=config["momentum"],
        nesterov=config["nesterov"],
        weight_decay=config["weight_decay"],
    )
    batch = config["batch_size"]
    total = config["epochs"] * -(-len(y) // batch)
    order_gen = torch.Generator().manual_seed(seed)
    step = 0
    for _ in range(config["epochs"]):
        order = torch.randperm(len(y), generator=order_gen)
        for start in range(0, len(y), batch):
            rows = order[start : start + batch]
            for group in opt.param_groups:
                group["lr"] = config["lr"] * 0.5 * (1 + math.cos(math.pi * step / total))
            loss = F.cross_entropy(x[rows] @ w.T, y[rows])
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
    return w.detach()


@pytest.mark.slow
@pytest.mark.requires("transformers")
def test_cooperation_of_a_token_snp_run(workdir, capsys, child_runs):
    run_id = train(TrainConfig(epochs=2, seed=0, **TINY))
    argv = ["snp", run_id, "--readout", "token", "--tokens", str(K), "--readout-epochs", "5"]
    argv += ["--readout-lr", "0.05", "--device", "cpu", "--no-progress"]
    assert cli.main(argv) == 0, capsys.readouterr().err
    snp_run_id = capsys.readouterr().out.strip().splitlines()[-1]
    ds = snp.load_from_run(snp_run_id)
    assert ds.attrs["readout"] == "token"

    argv = ["cooperation", snp_run_id, "--kind", "ff", "--layers", str(LAYER), "--draws", "2"]
    argv += ["--sizes", f"1,{NODES}", "--device", "cpu", "--no-progress"]
    assert cli.main(argv) == 0, capsys.readouterr().err
    (coop_run,) = child_runs(run_id, "cooperation")
    assert capsys.readouterr().out.strip().splitlines()[-1] == coop_run.info.run_id
    result = cooperation_run.load_from_run(coop_run.info.run_id)
    metrics = coop_run.data.metrics
    params = coop_run.data.params
    assert params["features"] == "pooled" and params["readouts"] == "stored"
    assert metrics["coop.chance"] == pytest.approx(1 / K)
    assert list(result.label_name.values) == list(ds.label_name_true.values)
    names = {a.path for a in mlflow.MlflowClient().list_artifacts(coop_run.info.run_id, "figures")}
    assert names and all(n.endswith(".png") for n in names)

    # A(all nodes): readouts trained literally on the literal positions, one per draw seed
    ckpt = tracking.load_checkpoint(run_id)
    model = ckpt.model.eval()
    data = data_for_analysis(ckpt.config)
    masking = masking_for(data)
    tokens = [int(t) for t in ds.attrs["token_ids"]]
    x_train, y_train = literal_positions(
        model, MaskedTokens(data.train, masking, 0, "train"), tokens
    )
    x_test, y_test = literal_positions(model, MaskedTokens(data.test, masking, 0, "test"), tokens)
    assert len(y_train) == ds.attrs["token_train_positions"]
    assert len(y_test) == ds.attrs["masked_positions"] - ds.attrs["left_out_positions"]
    config = json.loads(ds.attrs["readout_config"])
    at = result.sel(layer=LAYER, size=NODES)
    for draw in range(2):
        w = literal_readout(x_train, y_train, config, draw_seed(0, NODES, draw))
        logits = x_test @ w.T
        acc = float((logits.argmax(1) == y_test).float().mean())
        assert float(at["accuracy"].sel(draw=draw)) == pytest.approx(acc, abs=1e-6)
        means = torch.stack([logits[y_test == i].mean(0) for i in range(K)]).numpy()
        diag = np.diagonal(means) / means.max() if means.max() > 0 else np.zeros(K)
        assert at["recognised"].sel(draw=draw).values.tolist() == (diag > THETA).tolist()
    # not vacuous: the readouts predict more than one token and the two draws differ
    assert len(logits.argmax(1).unique()) > 1
    assert len(set(at["accuracy"].values.tolist())) == 2

    # the union of single-node D_n from the stored tensor (normalised matrices)
    stored = ds["snp_ff"].sel(layer=LAYER).values[:NODES]
    single = np.diagonal(stored, axis1=1, axis2=2) > THETA
    assert at["union"].sel(draw=0).values.tolist() == single.any(0).tolist()
    assert result["diagonal_labels"].sel(layer=LAYER).values.tolist() == single.sum(1).tolist()

    # the bound of a bias-free scalar readout: each node's largest and smallest weight win
    (site,) = [s for s in resolve(model, "all") if s.kind == "ff" and s.layer == LAYER]
    readouts = snp.load_readouts(snp_run_id, [site], device="cpu")
    w_snp = readouts[site.name].fc.weight.detach().double().numpy()  # [K, N]
    expected = np.zeros((NODES, K), dtype=bool)
    expected[np.arange(NODES), w_snp.argmax(0)] = True
    expected[np.arange(NODES), w_snp.argmin(0)] = True
    assert result["can_output"].sel(layer=LAYER).values.tolist() == expected.tolist()
    assert metrics[f"bound.max.ff.block{LAYER}"] == 2.0

    # without stored readouts they are retrained exactly as the SNP run trained them
    src = snp_sources(ds, tracking.get_run(snp_run_id).data.params, "ff", [LAYER])
    again = token_readouts(src, torch.as_tensor(tokens), torch.device("cpu"))
    np.testing.assert_allclose(again[site.name].fc.weight.double().numpy(), w_snp, atol=1e-6)
