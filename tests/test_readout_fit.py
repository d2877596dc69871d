"""The one readout-fitting core: its update against a hand-written SGD, and its batch order."""

from __future__ import annotations

import math

import pytest
import torch

from statmech_nn.readout import ReadoutConfig
from statmech_nn.readout.fit import batches_per_epoch, fit_step, shuffled_rows
from statmech_nn.train.steps import label_loss


def _hand_gradient(w: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """d/dW of the mean cross-entropy of ``x @ W.T``: ``(softmax - onehot).T @ x / B``."""
    z = x @ w.T
    p = torch.exp(z - z.max(1, keepdim=True).values)
    p = p / p.sum(1, keepdim=True)
    p[torch.arange(len(y)), y] -= 1.0
    return p.T @ x / len(y)


@pytest.mark.parametrize("schedule", ["cosine", "constant"])
def test_the_update_is_nesterov_sgd_with_weight_decay_and_a_cosine_per_step(schedule):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(6, 4, generator=gen, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    w0 = torch.randn(3, 4, generator=gen, dtype=torch.float64)
    config = ReadoutConfig(
        lr=0.3, momentum=0.8, nesterov=True, weight_decay=0.1, epochs=2, schedule=schedule
    )
    steps_per_epoch = 2
    fc = torch.nn.Linear(4, 3, bias=False).double()
    with torch.no_grad():
        fc.weight.copy_(w0)
    step = fit_step(fc.parameters(), config, steps_per_epoch)

    w, buf = w0.clone(), torch.zeros_like(w0)
    total = config.epochs * steps_per_epoch
    for k in range(total):
        step(label_loss(fc(x), y))
        g = _hand_gradient(w, x, y) + 0.1 * w
        buf = g if k == 0 else 0.8 * buf + g
        lr = 0.3 * (0.5 * (1 + math.cos(math.pi * k / total)) if schedule == "cosine" else 1.0)
        w = w - lr * (g + 0.8 * buf)
        torch.testing.assert_close(
            fc.weight.detach(), w, rtol=1e-5, atol=1e-6
        )  # the loss runs in float32
    assert not torch.equal(w, w0)


def test_shuffled_rows_cover_every_row_once_per_epoch_in_seeded_order():
    batches = list(shuffled_rows(10, 4, 2, seed=3))
    assert batches_per_epoch(10, 4) == 3
    assert [len(b) for b in batches] == [4, 4, 2] * 2
    epochs = [torch.cat(batches[:3]), torch.cat(batches[3:])]
    for order in epochs:
        assert sorted(order.tolist()) == list(range(10))
    gen = torch.Generator().manual_seed(3)
    assert torch.equal(epochs[0], torch.randperm(10, generator=gen))
    assert torch.equal(epochs[1], torch.randperm(10, generator=gen))
    assert all(torch.equal(a, b) for a, b in zip(batches, shuffled_rows(10, 4, 2, 3), strict=True))
