"""Phase 3: single-node (SNP) matrices for every node of every site, and their stored form.

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
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
import xarray as xr
from torch import nn
from torch.utils.data import DataLoader, Dataset

from statmech_nn.data.splits import subset
from statmech_nn.errors import SchemaError, StatmechError, TrackingError, UnknownNameError
from statmech_nn.readout import (
    READOUTS,
    FlattenReadout,
    Readout,
    ReadoutConfig,
    SeqPoolReadout,
    make_loader,
    make_readout,
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
    "compute_for_run",
    "load",
    "load_from_run",
    "load_readouts",
    "matrices",
    "normalise",
    "read_readouts",
    "save",
    "save_readouts",
]

SCHEMA = "statmech-nn.snp/1"
SILENCINGS = ("pre_pool", "post_pool")
SPLITS = ("test", "val", "train")
ARTIFACT_PATH = "snp/snp.nc"
READOUTS_FILE = "readouts.pt"
READOUTS_META = "readouts.json"
READOUTS_SCHEMA = "statmech-nn.readouts/1"
KIND_TAG = "statmech_nn.kind"


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


def _encoding(ds: xr.Dataset) -> dict[str, dict[str, Any]]:
    enc = {}
    for name, var in ds.data_vars.items():
        if var.dtype.kind == "f":
            enc[str(name)] = {"zlib": True, "complevel": 4}
            if str(name).startswith(("snp_", "head_snp_", "scale_")):
                enc[str(name)]["dtype"] = "float32"
    return enc


def save(ds: xr.Dataset, path: str | os.PathLike) -> Path:
    """Write ``ds`` as netCDF (h5netcdf, float32, zlib) atomically: temp file, then rename."""
    validate(ds)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        ds.to_netcdf(tmp, engine="h5netcdf", encoding=_encoding(ds))
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


_LIST_ATTRS = ("sites", "kinds")


def validate(ds: xr.Dataset) -> None:
    """Raise :class:`SchemaError` unless ``ds`` is an SNP Dataset of this schema."""
    if ds.attrs.get("schema") != SCHEMA:
        raise SchemaError(
            f"not an SNP tensor: attr schema={ds.attrs.get('schema')!r}, expected {SCHEMA!r} "
            "(write it with statmech_nn.snp.save)"
        )
    kinds = [v[4:] for v in ds.data_vars if str(v).startswith("snp_")]
    if not kinds:
        raise SchemaError("SNP tensor without any snp_{kind} variable")
    for kind in kinds:
        dims = ds[f"snp_{kind}"].dims
        if (
            len(dims) != 4
            or dims[0] != "layer"
            or dims[2:] != ("label_true", "label_out")
            or not (str(dims[1]).startswith("node"))
        ):
            raise SchemaError(
                f"snp_{kind} has dims {dims}, expected (layer, node, label_true, label_out)"
            )
        for prefix in ("scale_", "acc_"):
            if f"{prefix}{kind}" not in ds:
                raise SchemaError(f"SNP tensor lacks the variable {prefix}{kind}")
    if "count_label" not in ds:
        raise SchemaError("SNP tensor lacks the variable count_label")
    for attr in ("readout", "silencing", "split"):
        if attr not in ds.attrs:
            raise SchemaError(f"SNP tensor lacks the attr {attr!r}")


def load(path: str | os.PathLike) -> xr.Dataset:
    """Read an SNP netCDF (h5netcdf) fully into memory and validate it (:class:`SchemaError`)."""
    target = Path(path)
    if not target.exists():
        raise FileNotFoundError(f"no SNP tensor at {target}")
    try:
        with xr.open_dataset(target, engine="h5netcdf") as opened:
            ds = opened.load()
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SchemaError(f"{target} is not a readable netCDF file ({exc})") from exc
    for attr in _LIST_ATTRS:
        value = ds.attrs.get(attr)
        if isinstance(value, str):
            ds.attrs[attr] = [value]
        elif value is not None:
            ds.attrs[attr] = [str(v) for v in np.atleast_1d(value)]
    validate(ds)
    return ds


def find_snp_run(client: Any, run: Any) -> Any:
    """``run`` itself if it is an SNP run, else its newest finished SNP child run.

    Raises :class:`TrackingError` when ``run`` has no finished SNP child.
    """
    if run.data.tags.get(KIND_TAG) == "snp":
        return run
    run_id = run.info.run_id
    children = client.search_runs(
        [run.info.experiment_id],
        filter_string=(
            f"tags.mlflow.parentRunId = '{run_id}' and tags.`{KIND_TAG}` = 'snp' "
            "and attributes.status = 'FINISHED'"
        ),
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not children:
        raise TrackingError(
            f"run {run_id} is not an SNP run and has no finished SNP child run: "
            f"run `statmech-nn snp {run_id}` first"
        )
    return children[0]


def load_from_run(run_id: str, tracking_uri: str | None = None) -> xr.Dataset:
    """The SNP Dataset of an MLflow run: an SNP child run, or a training run's newest SNP child.

    Raises :class:`TrackingError` when the run does not exist or has no finished SNP child run.
    """
    import mlflow
    from mlflow.tracking import MlflowClient

    uri = _tracking_uri(tracking_uri)
    client = MlflowClient(tracking_uri=uri)
    try:
        run = client.get_run(run_id)
    except Exception as exc:  # mlflow raises MlflowException subclasses
        raise TrackingError(f"no MLflow run {run_id!r} in {uri} ({exc})") from exc
    snp_run = find_snp_run(client, run)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = mlflow.artifacts.download_artifacts(
                run_id=snp_run.info.run_id,
                artifact_path=ARTIFACT_PATH,
                dst_path=tmp,
                tracking_uri=uri,
            )
        except Exception as exc:
            raise TrackingError(
                f"run {snp_run.info.run_id} has no artifact {ARTIFACT_PATH} ({exc})"
            ) from exc
        return load(local)


def _tracking_uri(uri: str | None) -> str:
    """The tracking URI: explicit, else ``MLFLOW_TRACKING_URI``, else the toolkit's default."""
    from statmech_nn import tracking

    return tracking.resolve_uri(uri)


def compute_for_run(
    run_id: str,
    epoch: int | None = None,
    sites: str | Sequence[str] = "all",
    readout: str = "seqpool",
    silencing: str = "pre_pool",
    readout_epochs: int = 10,
    batch_size: int = 128,
    chunk_size: int = 128,
    split: str = "test",
    seed: int = 0,
    device: str | torch.device | None = None,
    progress: bool = True,
    tracking_uri: str | None = None,
    limit_train: int | None = None,
    limit_eval: int | None = None,
    readout_options: Mapping[str, Any] | None = None,
) -> tuple[str, xr.Dataset]:
    """SNP tensor of a training run's checkpoint, logged in an ``snp`` child run.

    Loads the checkpoint (``epoch`` or the last), rebuilds the run's data without augmentation,
    trains the readouts on the train split and computes the matrices on ``split``. The child run
    gets the tag ``statmech_nn.kind=snp``, every choice as a param, the metrics
    ``acc.readout.{kind}.{block_i|conv_i}``, the trained readouts (``snp/readouts.pt`` and
    ``snp/readouts.json``, see :func:`save_readouts`) and the artifact ``snp/snp.nc``, logged only
    once the tensor is complete (an interrupted run ends FAILED without an artifact). Returns
    ``(child_run_id, dataset)``.
    """
    import mlflow

    from statmech_nn import tracking
    from statmech_nn.sites import layer_label
    from statmech_nn.train import data_for_config

    check_options(readout, silencing, split)
    tracking.init_store(tracking_uri)
    ckpt = tracking.load_checkpoint(run_id, epoch)
    site_list = resolve(ckpt.model, sites)
    splits = data_for_config(ckpt.config, augment="none")
    evaluated = getattr(splits, split, None)
    if evaluated is None:
        raise UnknownNameError(f"the data of run {run_id} have no {split!r} split")
    limited = SimpleNamespace(
        train=subset(splits.train, limit_train, seed),
        val=splits.val,
        test=splits.test,
        classes=list(splits.classes),
        num_classes=splits.num_classes,
    )
    setattr(limited, split, subset(evaluated, limit_eval, seed))
    config = ReadoutConfig(
        readout=readout,
        epochs=readout_epochs,
        batch_size=batch_size,
        seed=seed,
        **dict(readout_options or {}),
    )
    with tracking.child_run(run_id, "snp") as active:
        child_id = active.info.run_id
        mlflow.set_tag(KIND_TAG, "snp")
        mlflow.log_params(
            {
                "sites": ",".join(s.name for s in site_list),
                "readout": readout,
                "silencing": silencing if readout == "seqpool" else "none",
                "split": split,
                "readout_epochs": readout_epochs,
                "readout_lr": config.lr,
                "readout_momentum": config.momentum,
                "readout_nesterov": config.nesterov,
                "readout_weight_decay": config.weight_decay,
                "readout_schedule": config.schedule,
                "batch_size": batch_size,
                "chunk_size": chunk_size,
                "seed": seed,
                "checkpoint_epoch": ckpt.epoch,
                "limit_train": limit_train,
                "limit_eval": limit_eval,
            }
        )
        attrs = {
            "model": str(ckpt.model_config.get("name", "")),
            "dataset": str(ckpt.config.get("dataset", "")),
            "checkpoint": ckpt.path,
            "checkpoint_epoch": int(ckpt.epoch),
            "mlflow_run_id": child_id,
            "training_run_id": run_id,
        }
        ds, trained = compute(
            ckpt.model,
            limited,
            site_list,
            readout,
            silencing,
            readout_epochs,
            batch_size,
            chunk_size,
            split,
            seed,
            device,
            progress,
            readout_options=readout_options,
            attrs=attrs,
            return_readouts=True,
        )
        metrics = {}
        for site in site_list:
            value = float(ds[f"acc_{site.kind}"].sel(layer=site.layer))
            metrics[f"acc.readout.{site.kind}.{layer_label(site)}"] = value
        mlflow.log_metrics(metrics)
        with tempfile.TemporaryDirectory() as tmp:
            path = save(ds, Path(tmp) / "snp.nc")
            folder = str(Path(ARTIFACT_PATH).parent)
            for written in save_readouts(trained, Path(tmp)):
                mlflow.log_artifact(str(written), artifact_path=folder)
            mlflow.log_artifact(str(path), artifact_path=folder)
    return child_id, ds


def save_readouts(readouts: Mapping[str, Readout], folder: str | os.PathLike) -> list[Path]:
    """Write trained readouts as ``readouts.pt`` and ``readouts.json`` in ``folder``.

    ``readouts.pt`` is ``{site name: state dict}`` of CPU tensors (load it with
    ``torch.load(weights_only=True)``); ``readouts.json`` records, per site, the readout kind,
    site kind and layer, ``tokens``/``nodes``/``labels`` and each tensor's shape, so the readouts
    can be rebuilt without retraining (:func:`load_readouts`). Returns both paths.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    states: dict[str, dict[str, torch.Tensor]] = {}
    meta: dict[str, Any] = {"schema": READOUTS_SCHEMA, "sites": {}}
    for name, r in readouts.items():
        state = {k: v.detach().cpu().clone() for k, v in r.state_dict().items()}
        states[name] = state
        meta["sites"][name] = {
            "readout": r.kind,
            "kind": r.site.kind if r.site is not None else "",
            "layer": r.site.layer if r.site is not None else -1,
            "tokens": r.tokens,
            "nodes": r.nodes,
            "labels": r.labels,
            "shapes": {k: list(v.shape) for k, v in state.items()},
        }
    weights = folder / READOUTS_FILE
    torch.save(states, weights)
    info = folder / READOUTS_META
    info.write_text(json.dumps(meta, indent=2, sort_keys=True), encoding="utf-8")
    return [weights, info]


def read_readouts(
    folder: str | os.PathLike, sites: Sequence[Site], device: str | torch.device | None = None
) -> dict[str, Readout]:
    """Rebuild the readouts of ``sites`` from :func:`save_readouts` files in ``folder``.

    Raises :class:`SchemaError` when a site is missing or its shapes differ from the stored ones.
    """
    folder = Path(folder)
    meta = json.loads((folder / READOUTS_META).read_text(encoding="utf-8"))
    if meta.get("schema") != READOUTS_SCHEMA:
        raise SchemaError(f"{folder / READOUTS_META}: schema {meta.get('schema')!r}")
    states = torch.load(folder / READOUTS_FILE, map_location="cpu", weights_only=True)
    out: dict[str, Readout] = {}
    for site in sites:
        info = meta["sites"].get(site.name)
        if info is None or site.name not in states:
            raise SchemaError(f"stored readouts have no site {site.name!r}: {sorted(states)}")
        r = make_readout(info["readout"], info["tokens"], info["nodes"], info["labels"], site)
        try:
            r.load_state_dict(states[site.name])
        except RuntimeError as exc:
            raise SchemaError(f"stored readout of {site.name} does not fit: {exc}") from exc
        r.to(resolve_device(device)).eval().requires_grad_(False)
        out[site.name] = r
    return out


def load_readouts(
    snp_run_id: str,
    sites: Sequence[Site],
    tracking_uri: str | None = None,
    device: str | torch.device | None = None,
) -> dict[str, Readout] | None:
    """The trained readouts an SNP run logged (``snp/readouts.pt``), or None if it has none."""
    import mlflow
    from mlflow.tracking import MlflowClient

    uri = _tracking_uri(tracking_uri)
    folder = str(Path(ARTIFACT_PATH).parent)
    names = {Path(f.path).name for f in MlflowClient(uri).list_artifacts(snp_run_id, folder)}
    if not {READOUTS_FILE, READOUTS_META} <= names:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp)
        for name in (READOUTS_FILE, READOUTS_META):
            got = mlflow.artifacts.download_artifacts(
                run_id=snp_run_id,
                artifact_path=f"{folder}/{name}",
                dst_path=str(local / name.replace(".", "_")),
                tracking_uri=uri,
            )
            os.replace(got, local / name)
        return read_readouts(local, sites, device)
