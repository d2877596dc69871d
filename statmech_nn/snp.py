"""Phase 3: single-node (SNP) matrices for every node of every site, as an xarray Dataset.

METHODS.md sections 4 and 9. For node ``n`` of a site, ``M_n[i, j]`` is the mean over test samples
of true label ``i`` of the field ``f_n(b, j)`` that node ``n`` alone sends to output ``j``. Every
field is linear in a per-node quantity, so all matrices follow from class-wise sums accumulated in
one streaming pass, with no per-node forward pass:

- ``mean``: ``f_n(b, j) = W[j, n] mean_t a[b,t,n]``; class sums of the token means.
- ``flatten``: ``f_n(b, j) = sum_t W[j,n,t] a[b,t,n]``; class sums ``A[i,t,n]`` of the activations,
  contracted with ``W`` at the end.
- ``seqpool`` / ``post_pool``: ``f_n(b, j) = W[j, n] z_n(b)`` with the pooled features ``z`` of
  the full readout; class sums of ``z``.
- ``seqpool`` / ``pre_pool``: the pooling sees node ``n`` alone,
  ``w[b,t,n] = softmax_t(a[b,t,n] g[n] + g0)`` for all nodes at once (elementwise), and
  ``f_n(b, j) = W[j, n] sum_t w[b,t,n] a[b,t,n]``; class sums of the node-pooled features.

**Single-head matrices** (sites with ``heads``, [SHP] route): all nodes outside head ``h`` are
silenced at the readout input, the readout is rerun, and ``M_h[i, j]`` is the class mean of the
logits. For ``mean``, ``flatten`` and ``post_pool`` this is the sum of the head's node fields
(``M_h = sum_{n in h} M_n`` before normalisation). For ``pre_pool`` the head's nodes pool
together: ``w_h[b,t] = softmax_t(sum_{n in h} a[b,t,n] g[n] + g0)`` and
``f_h(b, j) = sum_{n in h} W[j, n] sum_t w_h[b,t] a[b,t,n]``.

Normalisation: ``M_n / max(M_n)`` by the signed maximum; a maximum ``<= 0`` gives all zeros.
Labels without test samples get zero rows. The literal per-node procedure is in
:mod:`statmech_nn.snp_reference`.

Memory: one loader batch of activations per site plus ``chunk_size x tokens x nodes`` float64
intermediates (and ``labels x tokens x nodes`` sums for ``flatten``), independent of the number of
test samples.

The stored form (netCDF, readout files, MLflow ``snp`` child runs) lives in
:mod:`statmech_nn.snp_store`; its public names are re-exported here.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import xarray as xr
from torch import nn
from torch.utils.data import DataLoader, Dataset

from statmech_nn.errors import StatmechError, UnknownNameError
from statmech_nn.readout import (
    READOUTS,
    FlattenReadout,
    Readout,
    ReadoutConfig,
    SeqPoolReadout,
    make_loader,
    progress_bar,
    resolve_device,
    train_readouts,
)
from statmech_nn.sites import ActivationCapture, Site, resolve

__all__ = [
    "SCHEMA",
    "SILENCINGS",
    "SiteMatrices",
    "ThresholdError",
    "binarize",
    "build_dataset",
    "compute",
    "matrices",
    "normalise",
]

SCHEMA = "statmech-nn.snp/1"
SILENCINGS = ("pre_pool", "post_pool")
SPLITS = ("test", "val", "train")


FLUSH_SAMPLES = 1024
"""``flatten`` sums samples in float32 partials flushed to float64 every this many samples."""


class ThresholdError(StatmechError, ValueError):
    """A binarisation threshold outside (0, 1)."""


@dataclass
class SiteMatrices:
    """Un-normalised matrices of one site: ``raw [N, L, L]``, ``head_raw [H, L, L]`` or None."""

    site: Site
    raw: torch.Tensor
    head_raw: torch.Tensor | None
    accuracy: float
    counts: torch.Tensor


def check_options(readout: str, silencing: str, split: str | None = None) -> None:
    """Raise :class:`UnknownNameError` for an unknown readout, silencing or split name."""
    if readout not in READOUTS:
        raise UnknownNameError(f"unknown readout {readout!r}: choose one of {', '.join(READOUTS)}")
    if silencing not in SILENCINGS:
        raise UnknownNameError(
            f"unknown silencing {silencing!r}: choose one of {', '.join(SILENCINGS)}"
        )
    if split is not None and split not in SPLITS:
        raise UnknownNameError(f"unknown split {split!r}: choose one of {', '.join(SPLITS)}")


def head_count(site: Site, nodes: int) -> int | None:
    """Number of heads of ``site`` with ``nodes`` channels (None without heads)."""
    if not site.heads:
        return None
    if nodes % site.heads:
        raise UnknownNameError(
            f"site {site.name!r}: {nodes} nodes do not split into {site.heads} equal heads"
        )
    return site.heads


def node_features(readout: Readout, a: torch.Tensor, silencing: str) -> torch.Tensor:
    """``[B, N]`` per-node quantity ``q`` with field ``f_n(b, j) = W[j, n] q[b, n]``.

    Not defined for ``flatten`` (whose field needs the token axis).
    """
    if isinstance(readout, SeqPoolReadout):
        g = readout.pool.weight[0].to(a.dtype)
        g0 = readout.pool.bias[0].to(a.dtype)
        if silencing == "post_pool":
            w = torch.softmax(a @ g + g0, dim=1)
            return torch.einsum("bt,btn->bn", w, a)
        e = a * g + g0
        e -= e.amax(dim=1, keepdim=True)
        e.exp_()
        total = e.sum(dim=1)
        return e.mul_(a).sum(dim=1) / total
    return a.mean(dim=1)


def head_pooled_features(readout: SeqPoolReadout, a: torch.Tensor, heads: int) -> torch.Tensor:
    """``[B, N]``: each node pooled with the weights of its head alone (``pre_pool`` heads)."""
    b, t, n = a.shape
    g = readout.pool.weight[0].to(a.dtype).view(heads, n // heads)
    g0 = readout.pool.bias[0].to(a.dtype)
    ah = a.view(b, t, heads, n // heads)
    w = torch.softmax((ah * g).sum(-1) + g0, dim=1)
    return torch.einsum("bth,bthk->bhk", w, ah).reshape(b, n)


def _outer(means: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``out[n, i, j] = means[i, n] * w[j, n]``: every node's matrix at once."""
    return means.T[:, :, None] * w.T[:, None, :]


class _Accumulator:
    """Streaming class sums for one site."""

    def __init__(
        self,
        readout: Readout,
        site: Site,
        num_labels: int,
        silencing: str,
        dtype: torch.dtype,
        device: torch.device,
    ):
        self.readout, self.site, self.silencing = readout, site, silencing
        self.heads = head_count(site, readout.nodes)
        self.pre_pool_heads = (
            self.heads is not None
            and isinstance(readout, SeqPoolReadout)
            and silencing == "pre_pool"
        )
        shape = (
            (num_labels, readout.tokens, readout.nodes)
            if isinstance(readout, FlattenReadout)
            else (num_labels, readout.nodes)
        )
        self.sums = torch.zeros(shape, dtype=dtype, device=device)
        self.head_sums = (
            torch.zeros(num_labels, readout.nodes, dtype=dtype, device=device)
            if self.pre_pool_heads
            else None
        )
        self.correct = 0
        self._partial: torch.Tensor | None = None
        self._pending = 0

    def flush(self) -> None:
        """Move the float32 partial class sums of ``flatten`` into the float64 sums."""
        if self._partial is not None and self._pending:
            self.sums += self._partial
            self._partial.zero_()
        self._pending = 0

    def add(self, a: torch.Tensor, y: torch.Tensor) -> None:
        """Add one chunk: activations ``a [C, T, N]``, true labels ``y [C]``.

        Per-sample quantities are computed in ``a``'s dtype and summed per class in the
        accumulation dtype.
        """
        acc = self.sums.dtype
        if isinstance(self.readout, FlattenReadout):
            if a.dtype == acc:
                self.sums.index_add_(0, y, a)
                return
            if self._partial is None or self._partial.dtype != a.dtype:
                self._partial = torch.zeros(self.sums.shape, dtype=a.dtype, device=a.device)
            self._partial.index_add_(0, y, a)
            self._pending += len(y)
            if self._pending >= FLUSH_SAMPLES:
                self.flush()
            return
        self.sums.index_add_(0, y, node_features(self.readout, a, self.silencing).to(acc))
        if self.head_sums is not None:
            pooled = head_pooled_features(self.readout, a, self.heads)  # type: ignore[arg-type]
            self.head_sums.index_add_(0, y, pooled.to(acc))

    def finish(self, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        self.flush()
        denom = counts.clamp(min=1).to(self.sums.dtype)
        if isinstance(self.readout, FlattenReadout):
            w = self.readout.weight_jnt().to(self.sums.dtype)
            means = (self.sums / denom[:, None, None]).permute(2, 0, 1)
            raw = torch.bmm(means, w.permute(1, 2, 0))
        else:
            w = self.readout.fc.weight.to(self.sums.dtype)
            raw = _outer(self.sums / denom[:, None], w)
        head_raw = None
        if self.heads is not None:
            n, num_labels = raw.shape[0], raw.shape[1]
            if self.head_sums is not None:
                per_node = _outer(self.head_sums / denom[:, None], w)
            else:
                per_node = raw
            head_raw = per_node.view(self.heads, n // self.heads, num_labels, num_labels).sum(1)
        return raw, head_raw


def matrices(
    model: nn.Module,
    readouts: Mapping[str, Readout],
    data: Dataset | DataLoader,
    num_labels: int,
    silencing: str = "pre_pool",
    batch_size: int = 128,
    chunk_size: int = 128,
    device: str | torch.device | None = None,
    progress: bool = True,
    exact: bool = False,
    accuracy: bool = True,
) -> dict[str, SiteMatrices]:
    """Single-node (and single-head) matrices of every readout's site over ``data``.

    One pass of the frozen ``model`` (eval, no grad, cut after the last site) over ``data``;
    samples are processed in chunks of ``chunk_size``. Per-sample features are computed in
    float32 (float64 with ``exact``) and summed per class in float64. With ``accuracy`` (the
    default) each readout's accuracy is measured in the same pass (NaN otherwise). ``silencing``
    only matters for ``seqpool`` readouts.
    """
    check_options("seqpool", silencing)
    if chunk_size < 1:
        raise ValueError("chunk_size must be >= 1")
    sites = [r.site for r in readouts.values()]
    if any(s is None for s in sites):
        raise ValueError("readouts must carry their site (built by train_readouts/make_readout)")
    dev = resolve_device(device)
    model.to(dev)
    was_training = model.training
    model.eval()
    loader = make_loader(data, batch_size)
    accs = {
        name: _Accumulator(r, r.site, num_labels, silencing, torch.float64, dev)  # type: ignore[arg-type]
        for name, r in readouts.items()
    }
    work = {name: (copy.deepcopy(r).double() if exact else r) for name, r in readouts.items()}
    for name, acc in accs.items():
        acc.readout = work[name]
    counts = torch.zeros(num_labels, dtype=torch.long, device=dev)
    seen = 0
    try:
        with ActivationCapture(model, sites) as capture, torch.no_grad():  # type: ignore[arg-type]
            bar = progress_bar(len(loader), "snp matrices", progress)
            for batch in loader:
                x, y = batch[0].to(dev), torch.as_tensor(batch[1]).to(dev).long()
                acts = capture(x)
                if len(y) and (int(y.min()) < 0 or int(y.max()) >= num_labels):
                    raise ValueError(f"labels outside 0..{num_labels - 1} in the data")
                counts += torch.bincount(y, minlength=num_labels)
                seen += len(y)
                for name, readout in readouts.items():
                    readout.check(acts[name])
                    if accuracy:
                        accs[name].correct += int((readout(acts[name]).argmax(1) == y).sum())
                for start in range(0, len(y), chunk_size):
                    yc = y[start : start + chunk_size]
                    for name in readouts:
                        a = acts[name][start : start + chunk_size]
                        accs[name].add(a.double() if exact else a, yc)
                bar.update(1)
            bar.close()
    finally:
        model.train(was_training)
    out = {}
    for name, acc in accs.items():
        with torch.no_grad():
            raw, head_raw = acc.finish(counts)
        out[name] = SiteMatrices(
            readouts[name].site,  # type: ignore[arg-type]
            raw.cpu(),
            None if head_raw is None else head_raw.cpu(),
            acc.correct / max(seen, 1) if accuracy else float("nan"),
            counts.cpu(),
        )
    return out


def normalise(raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(M / max(M), max(M))`` per leading index; matrices whose max is ``<= 0`` become zeros."""
    scale = raw.flatten(1).amax(dim=1)
    positive = scale > 0
    safe = torch.where(positive, scale, torch.ones_like(scale))
    norm = torch.where(positive[:, None, None], raw / safe[:, None, None], torch.zeros_like(raw))
    return norm, scale


def _version() -> str:
    try:
        from statmech_nn import __version__

        return __version__
    except ImportError:  # pragma: no cover
        return "unknown"


def build_dataset(
    results: Mapping[str, SiteMatrices],
    class_names: Sequence[str] | None = None,
    *,
    readout: str,
    silencing: str,
    split: str = "test",
    readout_config: str = "{}",
    attrs: Mapping[str, Any] | None = None,
) -> xr.Dataset:
    """The SNP ``xarray.Dataset`` of docs/architecture.md from per-site matrices.

    Layers of all kinds share the ``layer`` dim (the union of their layers; a kind missing at a
    layer is NaN there). Layers of one kind narrower than its widest are NaN-padded, with the real
    width in ``node_count_{kind}``. The first kind with heads owns the ``head`` coord (on its node
    dim) and ``head`` dim; others use ``head_{kind}``.
    """
    if not results:
        raise ValueError("no site matrices to store")
    first = next(iter(results.values()))
    num_labels = first.raw.shape[1]
    names = list(class_names) if class_names is not None else [str(i) for i in range(num_labels)]
    if len(names) != num_labels:
        raise ValueError(f"{len(names)} class names for {num_labels} labels")
    by_kind: dict[str, list[SiteMatrices]] = {}
    for m in results.values():
        by_kind.setdefault(m.site.kind, []).append(m)
    layers = sorted({m.site.layer for m in results.values()})
    layer_index = {layer: i for i, layer in enumerate(layers)}
    data_vars: dict[str, Any] = {}
    coords: dict[str, Any] = {
        "layer": ("layer", np.asarray(layers, dtype=np.int64)),
        "label_true": ("label_true", np.arange(num_labels)),
        "label_out": ("label_out", np.arange(num_labels)),
        "label_name_true": ("label_true", np.asarray(names, dtype=str)),
        "label_name_out": ("label_out", np.asarray(names, dtype=str)),
    }
    first_width = None
    head_owner = None
    for kind, items in by_kind.items():
        width = max(m.raw.shape[0] for m in items)
        first_width = width if first_width is None else first_width
        node_dim = "node" if width == first_width else f"node_{kind}"
        if node_dim not in coords:
            coords[node_dim] = (node_dim, np.arange(width))
        snp = np.full((len(layers), width, num_labels, num_labels), np.nan, np.float32)
        scale = np.full((len(layers), width), np.nan, np.float32)
        acc = np.full(len(layers), np.nan)
        count = np.zeros(len(layers), np.int64)
        heads = {m.head_raw.shape[0] for m in items if m.head_raw is not None}
        if len(heads) > 1:
            raise ValueError(f"layers of kind {kind!r} have different head counts {sorted(heads)}")
        hsnp = None
        if heads:
            n_heads = heads.pop()
            head_dim = "head" if head_owner is None else f"head_{kind}"
            head_owner = head_owner or kind
            hsnp = np.full((len(layers), n_heads, num_labels, num_labels), np.nan, np.float32)
            coords[head_dim] = (node_dim, np.arange(width) // (width // n_heads))
        for m in items:
            li, n = layer_index[m.site.layer], m.raw.shape[0]
            norm, s = normalise(m.raw)
            snp[li, :n] = norm.numpy()
            scale[li, :n] = s.numpy()
            acc[li] = m.accuracy
            count[li] = n
            if hsnp is not None and m.head_raw is not None:
                hsnp[li] = normalise(m.head_raw)[0].numpy()
        dims = ("layer", node_dim, "label_true", "label_out")
        data_vars[f"snp_{kind}"] = (dims, snp)
        data_vars[f"scale_{kind}"] = (("layer", node_dim), scale)
        data_vars[f"acc_{kind}"] = (("layer",), acc)
        data_vars[f"node_count_{kind}"] = (("layer",), count)
        if hsnp is not None:
            data_vars[f"head_snp_{kind}"] = (("layer", head_dim, "label_true", "label_out"), hsnp)
    data_vars["count_label"] = (("label_true",), first.counts.numpy().astype(np.int64))
    sites = [m.site for m in results.values()]
    base = {
        "schema": SCHEMA,
        "readout": readout,
        "silencing": silencing if readout == "seqpool" else "none",
        "split": split,
        "n_samples": int(first.counts.sum()),
        "sites": [s.name for s in sites],
        "kinds": list(by_kind),
        "site_specs": json.dumps(
            [
                {
                    "name": s.name,
                    "kind": s.kind,
                    "layer": s.layer,
                    "module": s.module,
                    "hook": s.hook,
                    "layout": s.layout,
                    "heads": s.heads,
                }
                for s in sites
            ]
        ),
        "model": "",
        "dataset": "",
        "checkpoint": "",
        "checkpoint_epoch": -1,
        "mlflow_run_id": "",
        "readout_config": readout_config,
        "statmech_nn_version": _version(),
    }
    for key, value in (attrs or {}).items():
        base[key] = json.dumps(value) if isinstance(value, dict) else value
    return xr.Dataset(data_vars, coords=coords, attrs=base)


def compute(
    model: nn.Module,
    splits: Any,
    sites: str | Sequence[str] | Sequence[Site] = "all",
    readout: str = "seqpool",
    silencing: str = "pre_pool",
    readout_epochs: int = 10,
    batch_size: int = 128,
    chunk_size: int = 128,
    split: str = "test",
    seed: int = 0,
    device: str | torch.device | None = None,
    progress: bool = True,
    readout_options: Mapping[str, Any] | None = None,
    attrs: Mapping[str, Any] | None = None,
    return_readouts: bool = False,
) -> xr.Dataset | tuple[xr.Dataset, dict[str, Readout]]:
    """Train readouts on ``splits.train`` and return the SNP Dataset on ``splits.<split>``.

    ``splits`` has ``.train``, ``.val``, ``.test`` (datasets of ``(image, label)``), ``.classes``
    and ``.num_classes``. ``readout_options`` overrides :class:`ReadoutConfig` fields (lr,
    momentum, weight_decay, ...); ``attrs`` adds/overrides Dataset attrs (model, dataset,
    checkpoint, ...). The model is moved to ``device`` and left in its original train/eval mode.
    With ``return_readouts`` returns ``(dataset, {site name: trained readout})``.
    """
    check_options(readout, silencing, split)
    evaluated = getattr(splits, split, None)
    if evaluated is None:
        raise UnknownNameError(f"the data have no {split!r} split")
    site_list = resolve(model, sites)
    config = ReadoutConfig(
        readout=readout,
        epochs=readout_epochs,
        batch_size=batch_size,
        seed=seed,
        **dict(readout_options or {}),
    )
    num_labels = int(splits.num_classes)
    trained = train_readouts(model, site_list, splits.train, num_labels, config, device, progress)
    results = matrices(
        model, trained, evaluated, num_labels, silencing, batch_size, chunk_size, device, progress
    )
    ds = build_dataset(
        results,
        list(splits.classes),
        readout=readout,
        silencing=silencing,
        split=split,
        readout_config=config.to_json(),
        attrs=attrs,
    )
    return (ds, trained) if return_readouts else ds


def binarize(ds: xr.Dataset | xr.DataArray, theta: float = 0.3) -> xr.Dataset | xr.DataArray:
    """Boolean matrices ``M / max(M) > theta`` (strict) of every ``snp_*`` / ``head_snp_*``.

    A Dataset gives a Dataset of those variables (with coords); a DataArray gives a DataArray.
    NaN padding binarises to False. ``theta`` outside (0, 1) raises :class:`ThresholdError`.
    """
    try:
        t = float(theta)
    except (TypeError, ValueError):
        raise ThresholdError(f"threshold {theta!r} is not a number in (0, 1)") from None
    if not 0.0 < t < 1.0:
        raise ThresholdError(
            f"threshold theta={theta} is outside (0, 1): matrices are normalised to a maximum "
            "of 1, so pick e.g. 0.3"
        )
    if isinstance(ds, xr.DataArray):
        return ds > t
    names = [v for v in ds.data_vars if str(v).startswith(("snp_", "head_snp_"))]
    return xr.Dataset({v: ds[v] > t for v in names}, attrs={**ds.attrs, "theta": t})


# The stored form and the MLflow runs live in ``snp_store``; its public names stay reachable as
# ``snp.X`` (loaded on first use, so either module can be imported first).
def __getattr__(name: str) -> Any:
    from statmech_nn import snp_store

    if name in snp_store.__all__:
        return getattr(snp_store, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
