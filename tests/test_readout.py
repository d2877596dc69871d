"""Readouts: their maths, training on frozen activations, joint vs one-by-one equivalence."""

from __future__ import annotations

import pytest
import torch
from _tiny import SmallCNN
from torch import nn
from torch.utils.data import TensorDataset

from statmech_nn.errors import ConfigError, UnknownNameError
from statmech_nn.readout import (
    FlattenReadout,
    ReadoutConfig,
    SeqPoolReadout,
    evaluate,
    make_readout,
    train_readouts,
)
from statmech_nn.sites import resolve


class TokenNet(nn.Module):
    """Identity backbone on ``[B, T, N]`` inputs with two hookable stages."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Identity()
        self.b = nn.Linear(4, 4)
        torch.manual_seed(1)
        nn.init.normal_(self.b.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.a(x)).sum(1)


def separable_tokens(n: int = 240, labels: int = 3, seed: int = 0) -> TensorDataset:
    """Label ``y`` raises node ``y`` on a few tokens: linearly separable after pooling."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % labels
    x = 0.3 * torch.randn(n, 5, 4, generator=gen)
    x[torch.arange(n), :2, y] += 2.0
    return TensorDataset(x, y)


def images(n: int = 64, seed: int = 0) -> TensorDataset:
    gen = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 3, 8, 8, generator=gen), torch.arange(n) % 3)


def test_readouts_have_no_bias_and_the_documented_maths():
    a = torch.randn(5, 7, 4, dtype=torch.float64)
    seq = make_readout("seqpool", 7, 4, 3, seed=1).double()
    with torch.no_grad():
        seq.pool.weight.normal_()
        seq.pool.bias.fill_(0.4)
    g, g0, w = seq.pool.weight[0], seq.pool.bias[0], seq.fc.weight
    weights = torch.softmax(a @ g + g0, dim=1)
    expected = (weights[:, :, None] * a).sum(1) @ w.T
    torch.testing.assert_close(seq(a), expected)
    assert seq.fc.bias is None
    flat = make_readout("flatten", 7, 4, 3, seed=1).double()
    assert isinstance(flat, FlattenReadout) and flat.fc.bias is None
    manual = torch.einsum("btn,jnt->bj", a, flat.weight_jnt())
    torch.testing.assert_close(flat(a), manual)
    mean = make_readout("mean", 7, 4, 3, seed=1).double()
    torch.testing.assert_close(mean(a), a.mean(1) @ mean.fc.weight.T)


def test_fresh_seqpool_starts_as_token_mean():
    seq = make_readout("seqpool", 6, 4, 3, seed=2)
    mean = make_readout("mean", 6, 4, 3, seed=2)
    mean.fc.weight.data.copy_(seq.fc.weight.data)
    a = torch.randn(3, 6, 4)
    torch.testing.assert_close(seq(a), mean(a))
    assert isinstance(seq, SeqPoolReadout)


def test_unknown_readout_and_bad_config():
    with pytest.raises(UnknownNameError):
        make_readout("cls_token", 2, 2, 2)
    with pytest.raises(UnknownNameError):
        ReadoutConfig(readout="nope")
    with pytest.raises(UnknownNameError):
        ReadoutConfig(schedule="step")
    with pytest.raises(ConfigError):
        ReadoutConfig(epochs=-1)


@pytest.mark.parametrize("cache", ["none", "memory"])
@pytest.mark.parametrize("kind", ["seqpool", "mean", "flatten"])
def test_training_learns_a_separable_problem(kind, cache):
    model = TokenNet().eval()
    sites = resolve(model, "a:kind=tok")
    config = ReadoutConfig(readout=kind, epochs=8, batch_size=32, lr=0.1, cache=cache)
    readouts = train_readouts(model, sites, separable_tokens(), 3, config, "cpu", progress=False)
    acc = evaluate(model, readouts, separable_tokens(seed=5), device="cpu", progress=False)
    assert acc["a"] > 0.9


def test_backbone_frozen_and_mode_restored():
    model = SmallCNN(labels=3)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sites = resolve(model, "act1:kind=c,act2:kind=c:layer=1")
    train_readouts(
        model, sites, images(), 3, ReadoutConfig(epochs=1, batch_size=16), "cpu", progress=False
    )
    assert model.training
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("cache", ["none", "memory"])
@pytest.mark.parametrize("kind", ["seqpool", "flatten"])
def test_joint_training_equals_one_by_one(kind, cache):
    model = SmallCNN(labels=3).eval()
    both = resolve(model, "act1:kind=c,act2:kind=c:layer=1")
    config = ReadoutConfig(readout=kind, epochs=2, batch_size=16, seed=3, cache=cache)
    joint = train_readouts(model, both, images(), 3, config, "cpu", progress=False)
    for site in both:
        alone = train_readouts(model, [site], images(), 3, config, "cpu", progress=False)
        for (name, p), (_, q) in zip(
            joint[site.name].named_parameters(), alone[site.name].named_parameters(), strict=True
        ):
            torch.testing.assert_close(p, q, rtol=0, atol=1e-7, msg=f"{site.name}.{name}")


def test_training_is_deterministic_for_a_seed_and_changes_with_it():
    model = SmallCNN(labels=3).eval()
    sites = resolve(model, "act2:kind=c")
    run = [
        train_readouts(
            model,
            sites,
            images(),
            3,
            ReadoutConfig(epochs=1, batch_size=16, seed=s),
            "cpu",
            progress=False,
        )["act2"].fc.weight
        for s in (4, 4, 5)
    ]
    assert torch.equal(run[0], run[1])
    assert not torch.equal(run[0], run[2])


def test_evaluate_matches_a_manual_count():
    model = TokenNet().eval()
    sites = resolve(model, "a:kind=tok")
    readouts = train_readouts(
        model,
        sites,
        separable_tokens(),
        3,
        ReadoutConfig(readout="mean", epochs=0),
        "cpu",
        progress=False,
    )
    data = separable_tokens(n=50, seed=9)
    got = evaluate(model, readouts, data, batch_size=7, device="cpu", progress=False)["a"]
    x, y = data.tensors
    with torch.no_grad():
        manual = float((readouts["a"](x).argmax(1) == y).float().mean())
    assert got == pytest.approx(manual)
