"""Token-level SNP (docs/methods.md section 10) against a literal per-node, per-position loop."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from statmech_nn import snp
from statmech_nn.errors import ConfigError
from statmech_nn.sites import Site
from statmech_nn.snp.tokens import TokenSums, token_snp, top_tokens

B, T, N, V, K = 6, 7, 8, 12, 4
SITES = [Site("block0.ff", "ff", 0, "m0"), Site("block1.mha", "mha", 1, "m1", heads=2)]


def batch(seed: int = 0):
    """Random activations, ~half the positions masked, targets skewed towards small ids."""
    g = torch.Generator().manual_seed(seed)
    acts = {s.name: torch.randn(B, T, N, generator=g) for s in SITES}
    masked = torch.rand(B, T, generator=g) < 0.5
    draws = torch.randint(0, V, (2, B, T), generator=g)
    targets = draws.min(0).values
    weights = {s.name: torch.randn(V, N, generator=g) for s in SITES}
    return acts, masked, targets, weights


def literal_top(masked, targets, k):
    counts = Counter(int(t) for t, m in zip(targets.flatten(), masked.flatten(), strict=True) if m)
    return [t for t, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:k]]


def literal_node_matrices(a, masked, targets, weight, tokens):
    """``M_n[i, j]``: mean over kept positions of ``W[tokens[j], n] a[b, t, n]``, node by node."""
    raw = np.zeros((N, len(tokens), len(tokens)))
    for n in range(N):
        for i, ti in enumerate(tokens):
            positions = [
                (b, t) for b in range(B) for t in range(T) if masked[b, t] and targets[b, t] == ti
            ]
            for j, tj in enumerate(tokens):
                fields = [float(weight[tj, n]) * float(a[b, t, n]) for b, t in positions]
                raw[n, i, j] = sum(fields) / len(fields)
    return raw


def normalised(raw):
    out = np.zeros_like(raw)
    for u in range(len(raw)):
        top = raw[u].max()
        out[u] = raw[u] / top if top > 0 else 0.0
    return out


def test_the_k_most_frequent_masked_tokens():
    _, masked, targets, _ = batch()
    ids, counts = top_tokens(masked, targets, K)
    assert ids.tolist() == literal_top(masked, targets, K)
    assert counts.tolist() == [int(((targets == t) & masked).sum()) for t in ids.tolist()]
    with pytest.raises(ConfigError, match="distinct tokens"):
        top_tokens(masked, targets, V + 1)
    with pytest.raises(ConfigError, match=">= 1"):
        top_tokens(masked, targets, 0)


def test_matrices_equal_the_literal_loop_and_unmasked_positions_do_not_matter():
    acts, masked, targets, weights = batch()
    names = [f"tok{i}" for i in range(V)]
    ds = token_snp(SITES, acts, masked, targets, weights, k=K, token_names=names)
    tokens = literal_top(masked, targets, K)
    assert ds["label_name_true"].values.tolist() == [f"tok{t}" for t in tokens]
    assert ds.attrs["token_ids"] == tokens and ds.attrs["readout"] == "token"
    kept = sum(int(((targets == t) & masked).sum()) for t in tokens)
    assert ds.attrs["left_out_positions"] == int(masked.sum()) - kept > 0
    assert ds["count_label"].values.tolist() == [
        int(((targets == t) & masked).sum()) for t in tokens
    ]
    for site in SITES:
        raw = literal_node_matrices(acts[site.name], masked, targets, weights[site.name], tokens)
        got = ds[f"snp_{site.kind}"].sel(layer=site.layer).values
        np.testing.assert_allclose(got, normalised(raw), rtol=1e-5, atol=1e-6)
        w = weights[site.name][tokens]  # [K, N]
        a = acts[site.name][masked]
        y = targets[masked]
        keep = torch.isin(y, torch.tensor(tokens))
        logits = a[keep] @ w.T
        truth = torch.tensor([tokens.index(int(t)) for t in y[keep]])
        expected_acc = float((logits.argmax(1) == truth).double().mean())
        assert float(ds[f"acc_{site.kind}"].sel(layer=site.layer)) == pytest.approx(expected_acc)
    mha = literal_node_matrices(acts["block1.mha"], masked, targets, weights["block1.mha"], tokens)
    half = N // 2
    heads = normalised(np.stack([mha[h * half : (h + 1) * half].sum(0) for h in range(2)]))
    np.testing.assert_allclose(ds["head_snp_mha"].sel(layer=1).values, heads, rtol=1e-5, atol=1e-6)

    noisy = {k: v.clone() for k, v in acts.items()}
    other_targets = targets.clone()
    for v in noisy.values():
        v[~masked] = 1e3
    other_targets[~masked] = 0
    again = token_snp(SITES, noisy, masked, other_targets, weights, k=K, token_names=names)
    np.testing.assert_array_equal(again["snp_ff"].values, ds["snp_ff"].values)


def test_streaming_sums_equal_one_batch_and_the_dataset_round_trips(tmp_path):
    acts, masked, targets, weights = batch(1)
    tokens, _ = top_tokens(masked, targets, K)
    whole = TokenSums(tokens, weights["block0.ff"])
    whole.add(acts["block0.ff"], masked, targets)
    parts = TokenSums(tokens, weights["block0.ff"])
    for rows in (slice(0, 2), slice(2, B)):
        parts.add(acts["block0.ff"][rows], masked[rows], targets[rows])
    torch.testing.assert_close(parts.finish()[0], whole.finish()[0])
    assert parts.left_out == whole.left_out
    ds = token_snp(SITES, acts, masked, targets, weights, k=K)
    loaded = snp.load(snp.save(ds, tmp_path / "tokens.nc"))
    np.testing.assert_array_equal(loaded["snp_mha"].values, ds["snp_mha"].values)
    binary = snp.binarize(loaded, 0.3)
    assert binary["snp_ff"].dtype == bool


def test_bad_inputs():
    acts, masked, targets, weights = batch()
    tokens, _ = top_tokens(masked, targets, K)
    with pytest.raises(ConfigError, match="outside"):
        TokenSums(torch.tensor([V]), weights["block0.ff"])
    with pytest.raises(ValueError, match=r"\[B, T\]"):
        top_tokens(masked[0], targets[0], 1)
    sums = TokenSums(tokens, weights["block0.ff"])
    with pytest.raises(ConfigError, match="no kept masked position"):
        sums.finish()
    with pytest.raises(ConfigError, match="token names"):
        token_snp(SITES, acts, masked, targets, weights, k=K, token_names=["a"])


def test_the_andc_study_refuses_token_snp_tensors_first():
    """The ANDC study reads per-sample readouts: a token tensor is refused with one ConfigError
    before any run or checkpoint is touched (cooperation reads them: test_cooperation_tokens)."""
    import xarray as xr

    from statmech_nn.errors import ConfigError
    from statmech_nn.studies.build import load_sources

    ds = xr.Dataset(attrs={"readout": "token", "training_run_id": "no-such-run"})
    with pytest.raises(ConfigError, match="ANDC study .*token-level SNP runs"):
        load_sources(ds, "no-such-run", "ff", [0], "sqlite:///nowhere.db")
