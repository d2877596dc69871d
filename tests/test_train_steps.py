"""The shared training step: fine-tuning and accuracy against literal copies of the old loops."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from _tiny import small_cct
from torch.utils.data import DataLoader, TensorDataset

from statmech_nn.errors import StatmechError
from statmech_nn.train import accuracy, fine_tune, model_state, param_groups, soft_target_loss


def _old_param_groups(model, weight_decay):
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 or "positional" in name else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def old_retrain(model, data, settings, device="cpu", batch_transform=None):
    """A literal copy of ``network_pruning.retrain`` before it moved onto the shared step."""
    dev = torch.device(device)
    model.to(dev).train()
    gen = torch.Generator().manual_seed(settings.seed)
    torch.manual_seed(settings.seed)
    loader = DataLoader(data, batch_size=settings.batch_size, shuffle=True, generator=gen)
    if settings.epochs == 0 or len(loader) == 0:
        model.eval()
        return math.nan
    optimizer = torch.optim.AdamW(_old_param_groups(model, settings.weight_decay), lr=settings.lr)
    total = settings.epochs * len(loader)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1.0 + math.cos(math.pi * step / total))
    )
    use_amp = dev.type == "cuda" and settings.amp
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    loss_sum, count = 0.0, 0
    for _ in range(settings.epochs):
        for x, y in loader:
            x, y = x.to(dev), torch.as_tensor(y).to(dev).long()
            target = None
            if batch_transform is not None:
                x, target = batch_transform(x, y)
            with torch.autocast("cuda", dtype=torch.float16, enabled=use_amp):
                logits = model(x)
            if target is not None:
                loss = torch.sum(-target * F.log_softmax(logits.float(), -1), -1).mean()
            else:
                loss = F.cross_entropy(logits.float(), y, label_smoothing=settings.label_smoothing)
            if not torch.isfinite(loss):
                raise StatmechError("non-finite")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            schedule.step()
            loss_sum += float(loss.detach()) * len(y)
            count += len(y)
    model.eval()
    return loss_sum / max(count, 1)


@torch.no_grad()
def old_evaluate_accuracy(model, data, device="cpu", batch_size=256):
    """A literal copy of ``network_pruning.evaluate_accuracy``."""
    dev = torch.device(device)
    was_training = model.training
    model.to(dev).eval()
    correct = seen = 0
    for x, y in DataLoader(data, batch_size=batch_size, shuffle=False):
        y = torch.as_tensor(y).to(dev)
        correct += int((model(x.to(dev)).argmax(-1) == y).sum())
        seen += len(y)
    model.train(was_training)
    return correct / max(seen, 1)


def tiny_data(n: int = 36) -> TensorDataset:
    g = torch.Generator().manual_seed(7)
    return TensorDataset(torch.randn(n, 3, 16, 16, generator=g), torch.arange(n) % 4)


def mixup(x, y):
    """A random soft-target transform (draws from torch's RNG, like mixup/cutmix)."""
    lam = float(torch.rand(()))
    perm = torch.randperm(len(y))
    one_hot = F.one_hot(y, 4).float() * 0.9 + 0.1 / 4
    return lam * x + (1 - lam) * x[perm], lam * one_hot + (1 - lam) * one_hot[perm]


SETTINGS = SimpleNamespace(
    epochs=2, lr=1e-2, weight_decay=0.05, batch_size=8, label_smoothing=0.1, seed=3, amp=True
)


def _assert_same_weights(a, b):
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(p, q), name


def test_fine_tune_matches_the_old_retraining_loop_exactly():
    ours, theirs = small_cct(), small_cct()
    loss = fine_tune(ours, tiny_data(), SETTINGS)
    reference = old_retrain(theirs, tiny_data(), SETTINGS)
    assert loss == reference and math.isfinite(loss)
    _assert_same_weights(ours, theirs)
    assert not ours.training
    assert not torch.equal(ours.state_dict()["classifier.fc.weight"],
                           small_cct().state_dict()["classifier.fc.weight"])  # fmt: skip


def test_fine_tune_with_soft_targets_matches_the_old_loop():
    ours, theirs = small_cct(), small_cct()
    loss = fine_tune(ours, tiny_data(), SETTINGS, batch_transform=mixup)
    reference = old_retrain(theirs, tiny_data(), SETTINGS, batch_transform=mixup)
    # F.cross_entropy on probabilities sums in another order than the hand-written loss.
    assert loss == pytest.approx(reference, rel=1e-6)
    for p, q in zip(ours.parameters(), theirs.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_fine_tune_without_epochs_returns_nan_and_leaves_the_weights():
    model, before = small_cct(), small_cct()
    settings = SimpleNamespace(**{**vars(SETTINGS), "epochs": 0})
    assert math.isnan(fine_tune(model, tiny_data(), settings))
    _assert_same_weights(model, before)


def test_fine_tune_stops_on_a_non_finite_loss():
    settings = SimpleNamespace(**{**vars(SETTINGS), "lr": 1e30, "epochs": 3})
    with pytest.raises(StatmechError, match="retraining loss became non-finite"):
        fine_tune(small_cct(), tiny_data(), settings)


def test_accuracy_matches_the_old_evaluator_and_a_hand_count():
    model, data = small_cct(), tiny_data(40)
    model.train()
    got = accuracy(model, data, batch_size=16)
    assert got == old_evaluate_accuracy(model, data, batch_size=16)
    assert model.training  # restored
    model.eval()
    with torch.no_grad():
        hand = sum(int(model(x[None]).argmax() == y) for x, y in data) / len(data)
    assert got == hand


def test_soft_target_loss_is_the_cross_entropy_against_probabilities():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 4, generator=g)
    target = torch.softmax(torch.randn(5, 4, generator=g), -1)
    by_hand = -(target * torch.log(torch.softmax(logits.double(), -1))).sum(-1).mean()
    assert soft_target_loss(logits, target).item() == pytest.approx(by_hand.item(), rel=1e-6)
    labels = torch.tensor([0, 3, 1, 2, 0])
    hard = F.one_hot(labels, 4).float()
    assert soft_target_loss(logits, hard).item() == pytest.approx(
        F.cross_entropy(logits, labels).item(), rel=1e-6
    )


def test_parameter_groups_exempt_one_dimensional_and_positional_parameters():
    model = small_cct()
    decay, no_decay = param_groups(model, 0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(p.ndim >= 2 and "positional" not in names[id(p)] for p in decay["params"])
    assert any("positional" in names[id(p)] for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_model_state_is_a_loadable_checkpoint_without_training_parts(workdir):
    from statmech_nn import tracking

    model = small_cct(1)
    state = model_state(
        2, model, model.config, {"lr": 0.1}, {"acc": 0.5}, masks={"m": torch.ones(2)}
    )
    assert list(state) == ["format", "epoch", "model", "model_config", "config", "masks", "metrics"]
    tracking.init_store()
    with tracking.run("e") as run:
        tracking.log_checkpoint(run.info.run_id, state, 2)
    loaded = tracking.load_checkpoint(run.info.run_id)
    assert loaded.epoch == 2 and loaded.config == {"lr": 0.1}
    _assert_same_weights(loaded.model, model)
