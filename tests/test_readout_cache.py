"""The readout activation cache and batched readouts equal the reference (uncached) loop."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytest
import torch
from _tiny import SmallCNN, tiny_cct
from torch.utils.data import DataLoader, TensorDataset

from statmech_nn.errors import ConfigError
from statmech_nn.readout import (
    BatchedReadout,
    ReadoutConfig,
    deterministic_algorithms,
    evaluate,
    make_readout,
    train_readouts,
)
from statmech_nn.readout.cache import build_cache, plan_groups, probe_shapes, site_bytes
from statmech_nn.readout.loading import make_loader, sequential_loader
from statmech_nn.readout.modules import readout_class
from statmech_nn.sites import resolve

KINDS = ["seqpool", "mean", "flatten"]


def images(n: int = 60, size: int = 8, labels: int = 3, seed: int = 0) -> TensorDataset:
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % labels
    x = torch.randn(n, 3, size, size, generator=gen) + 0.5 * y[:, None, None, None]
    return TensorDataset(x, y)


def cnn_and_sites():
    model = SmallCNN(labels=3).eval()
    return model, resolve(model, "act1:kind=c,act2:kind=c:layer=1")


def train(model, sites, data, kind, labels=3, **options):
    config = ReadoutConfig(readout=kind, epochs=3, batch_size=16, seed=2, lr=0.05, **options)
    return train_readouts(model, sites, data, labels, config, "cpu", progress=False)


def assert_same_readouts(a, b, atol=1e-5, rtol=1e-4):
    assert list(a) == list(b)
    for name in a:
        pa, pb = dict(a[name].named_parameters()), dict(b[name].named_parameters())
        assert list(pa) == list(pb)
        for key in pa:
            torch.testing.assert_close(pa[key], pb[key], atol=atol, rtol=rtol, msg=f"{name}.{key}")


def no_hooks(model) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


@pytest.mark.parametrize("kind", KINDS)
def test_fp32_cache_equals_the_uncached_loop_on_a_cnn(kind):
    model, sites = cnn_and_sites()
    data = images()
    reference = train(model, sites, data, kind, cache="none")
    cached = train(model, sites, data, kind, cache_dtype="fp32")
    assert_same_readouts(reference, cached)
    test = images(n=45, seed=7)
    acc_ref = evaluate(model, reference, test, device="cpu", progress=False)
    acc_cached = evaluate(model, cached, test, device="cpu", progress=False)
    for name in acc_ref:
        assert abs(acc_ref[name] - acc_cached[name]) <= 1 / 45 + 1e-12
    assert no_hooks(model)


@pytest.mark.parametrize("kind", KINDS)
def test_fp32_cache_equals_the_uncached_loop_on_a_cct(kind):
    model = tiny_cct()
    sites = resolve(model, "mha,ff")
    data = images(n=48, size=16, labels=4)
    reference = train(model, sites, data, kind, labels=4, cache="none")
    cached = train(model, sites, data, kind, labels=4, cache_dtype="fp32")
    assert_same_readouts(reference, cached)


def test_bf16_cache_is_close_to_the_uncached_loop():
    model, sites = cnn_and_sites()
    data = images()
    reference = train(model, sites, data, "seqpool", cache="none")
    cached = train(model, sites, data, "seqpool")  # the default: bf16 in memory
    assert_same_readouts(reference, cached, atol=2e-2, rtol=5e-2)
    test = images(n=45, seed=7)
    acc_ref = evaluate(model, reference, test, device="cpu", progress=False)
    acc = evaluate(model, cached, test, device="cpu", progress=False)
    assert all(abs(acc[n] - acc_ref[n]) <= 2 / 45 + 1e-12 for n in acc)


def test_user_loader_with_its_own_shuffling_keeps_its_order():
    model, sites = cnn_and_sites()
    data = images()
    runs = []
    for cache in ("none", "memory"):
        loader = DataLoader(
            data, batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(5)
        )
        runs.append(train(model, sites, loader, "mean", cache=cache, cache_dtype="fp32"))
    assert_same_readouts(*runs)


def test_disk_cache_equals_memory_cache_and_leaves_no_files(tmp_path: Path):
    model, sites = cnn_and_sites()
    data = images()
    memory = train(model, sites, data, "flatten", cache_dtype="fp32")
    disk = train(
        model, sites, data, "flatten", cache_dtype="fp32", cache="disk", cache_dir=str(tmp_path)
    )
    assert_same_readouts(memory, disk, atol=0, rtol=0)
    assert list(tmp_path.iterdir()) == []


def test_sites_over_the_budget_are_cached_in_groups_by_depth(caplog):
    model, sites = cnn_and_sites()
    data = images()
    whole = train(model, sites, data, "seqpool", cache_dtype="fp32")
    shapes = {"act1": (64, 4), "act2": (16, 6)}
    sizes = {n: site_bytes("seqpool", s, len(data), torch.float32) for n, s in shapes.items()}
    assert max(sizes.values()) < sum(sizes.values())
    calls = []
    handle = model.act2.register_forward_hook(lambda *_: calls.append(1))
    try:
        with caplog.at_level(logging.INFO, logger="statmech_nn.readout"):
            grouped = train(
                model, sites, data, "seqpool", cache_dtype="fp32", cache_budget=max(sizes.values())
            )
    finally:
        handle.remove()
    assert_same_readouts(whole, grouped, atol=1e-6, rtol=1e-5)
    assert "in 2 groups by depth" in caplog.text
    # act2 runs in the shape probe and in the pass for its own group, not in act1's pass.
    assert len(calls) == 1 + math.ceil(len(data) / 16)
    assert no_hooks(model)


def test_a_site_over_the_budget_falls_back_to_the_uncached_loop(caplog):
    model, sites = cnn_and_sites()
    data = images()
    reference = train(model, sites, data, "mean", cache="none")
    with caplog.at_level(logging.WARNING, logger="statmech_nn.readout"):
        fallback = train(model, sites, data, "mean", cache_budget=10)
    assert "readout cache off" in caplog.text
    assert_same_readouts(reference, fallback, atol=0, rtol=0)


def test_plan_groups_keeps_depth_order_and_the_budget():
    order = ["a", "b", "c", "d", "e"]
    sizes = {"a": 3, "b": 4, "c": 2, "d": 5, "e": 1}
    for budget in range(5, 16):
        groups = plan_groups(order, sizes, budget)
        assert [n for g in groups for n in g] == order
        assert all(sum(sizes[n] for n in g) <= budget for g in groups)
        # first fit: no group could have taken the next group's first site
        for g, nxt in zip(groups, groups[1:], strict=False):
            assert sum(sizes[n] for n in g) + sizes[nxt[0]] > budget
    assert plan_groups(order, sizes, 4) is None
    assert plan_groups(order, sizes, 15) == [order]


@pytest.mark.parametrize("kind", KINDS)
def test_cached_features_read_as_the_activations(kind):
    a = torch.randn(5, 7, 4, dtype=torch.float64)
    readout = make_readout(kind, 7, 4, 3, seed=1).double()
    f = readout_class(kind).features(a)
    torch.testing.assert_close(readout.forward_features(f), readout(a))


def test_mean_caches_only_token_means_and_flatten_caches_node_major():
    model, sites = cnn_and_sites()
    data = images(n=20)
    seq = sequential_loader(make_loader(data, 8), 8)
    shapes = probe_shapes(model, sites, seq, torch.device("cpu"))
    assert list(shapes) == ["act1", "act2"] and shapes == {"act1": (64, 4), "act2": (16, 6)}
    x = data.tensors[0]
    acts = {"act1": model.act1(model.conv1(x))}
    acts["act2"] = model.act2(model.conv2(acts["act1"]))
    tokens = {k: v.flatten(2).transpose(1, 2) for k, v in acts.items()}
    for kind, expected_shape in (("mean", (20, 4)), ("flatten", (20, 4 * 64))):
        cache = build_cache(
            model, sites, kind, shapes, seq, 20, torch.float32, torch.device("cpu"), progress=False
        )
        first = cache.site("act1")
        assert first.shape == expected_shape and first.is_contiguous()
        if kind == "mean":
            torch.testing.assert_close(first, tokens["act1"].mean(1))
            assert cache.nbytes == 20 * (4 + 6) * 4
        else:
            torch.testing.assert_close(first, tokens["act1"].transpose(1, 2).flatten(1))
        torch.testing.assert_close(cache.labels, data.tensors[1])
    assert no_hooks(model)


@pytest.mark.parametrize("kind", KINDS)
def test_batched_module_equals_the_separate_readouts(kind):
    readouts = [make_readout(kind, 6, 4, 3, seed=s).double() for s in range(3)]
    if kind == "seqpool":
        with torch.no_grad():
            for r in readouts:
                r.pool.weight.normal_()
                r.pool.bias.normal_()
    batched = BatchedReadout(readouts).double()
    a = torch.randn(3, 5, 6, 4, dtype=torch.float64)
    f = torch.stack([readout_class(kind).features(a[i]) for i in range(3)])
    logits = batched(f)
    for i, r in enumerate(readouts):
        torch.testing.assert_close(logits[i], r(a[i]))
    y = torch.tensor([0, 2, 1, 1, 0])
    separate = sum(torch.nn.functional.cross_entropy(r(a[i]), y) for i, r in enumerate(readouts))
    torch.testing.assert_close(batched.loss(f, y), separate)


@pytest.mark.parametrize("kind", KINDS)
def test_batched_training_equals_separate_training(kind):
    model = tiny_cct()
    sites = resolve(model, "mha,ff")
    data = images(n=48, size=16, labels=4)
    separate = train(model, sites, data, kind, labels=4, cache_dtype="fp32", batched=False)
    batched = train(model, sites, data, kind, labels=4, cache_dtype="fp32", batched=True)
    assert_same_readouts(separate, batched)


def test_epochs_zero_gives_fresh_readouts_without_a_cache():
    model, sites = cnn_and_sites()
    got = train_readouts(
        model, sites, images(), 3, ReadoutConfig(epochs=0, seed=4), "cpu", progress=False
    )
    for site in sites:
        r = got[site.name]
        fresh = make_readout("seqpool", r.tokens, r.nodes, 3, site, seed=4)
        assert torch.equal(r.fc.weight, fresh.fc.weight)


@pytest.mark.parametrize(
    "options",
    [
        {"cache": "ram"},
        {"cache_dtype": "fp16"},
        {"autocast": "fp8"},
        {"cache_dir": "/tmp/x"},
        {"cache_budget": 0},
        {"cache_budget": -5},
        {"cache": "none", "batched": True},
        {"cache": "none", "compile": True},
        {"epochs": -1},
        {"batch_size": 0},
        {"lr": 0.0},
        {"momentum": -0.1},
        {"momentum": 0.0, "nesterov": True},
        {"weight_decay": -1.0},
        {"num_workers": -1},
    ],
)
def test_bad_options_raise_config_errors(options):
    with pytest.raises(ConfigError):
        ReadoutConfig(**options)


def test_stored_json_round_trips_and_leaves_machine_paths_out(tmp_path: Path):
    config = ReadoutConfig(cache="disk", cache_dir=str(tmp_path), cache_budget=10**9, epochs=3)
    stored = json.loads(config.to_json())
    assert "cache_dir" not in stored and "cache_budget" not in stored
    assert stored["epochs"] == 3 and stored["cache"] == "disk"
    reloaded = ReadoutConfig(**stored)  # on another machine: its own temporary folder
    assert reloaded.cache == "disk" and reloaded.cache_dir is None and reloaded.epochs == 3
    before_caching = ("readout", "epochs", "lr", "momentum", "nesterov", "weight_decay")
    old = {k: getattr(ReadoutConfig(), k) for k in before_caching}
    assert ReadoutConfig(**old) == ReadoutConfig()


def test_deterministic_mode_is_scoped():
    before = torch.are_deterministic_algorithms_enabled()
    with deterministic_algorithms(True):
        assert torch.are_deterministic_algorithms_enabled()
    assert torch.are_deterministic_algorithms_enabled() == before
    model, sites = cnn_and_sites()
    runs = [train(model, sites, images(), "mean", deterministic=True) for _ in range(2)]
    assert_same_readouts(*runs, atol=0, rtol=0)
    assert torch.are_deterministic_algorithms_enabled() == before


@pytest.mark.slow
def test_compiled_step_equals_the_eager_step():
    model, sites = cnn_and_sites()
    data = images()
    eager = train(model, sites, data, "seqpool", cache_dtype="fp32")
    compiled = train(model, sites, data, "seqpool", cache_dtype="fp32", compile=True)
    assert_same_readouts(eager, compiled)
