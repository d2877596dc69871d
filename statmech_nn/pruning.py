"""ANDC pruning (METHODS.md section 8): masks, the random control, masked-readout evaluation.

At a site's readout, ANDC keeps the connection from node ``n`` to output unit ``j`` iff
``B_n[j, j] = 1`` (``variant="diagonal"``) or iff ``j`` lies in one of ``n``'s clusters of at
least ``min_cluster_size`` labels (``variant="cluster"``). With the cluster rule of METHODS.md
section 5 every diagonal label belongs to some cluster (size-1 clusters count), so ``cluster``
with ``min_cluster_size=1`` keeps exactly the ``diagonal`` connections; ``min_cluster_size=2``
drops the labels a node recognises only on their own.

Masks are ``xarray.DataArray`` booleans with dims ``(layer, node, label_out)`` (the node dim is
called ``node`` whatever the kind) and a ``valid (layer, node)`` coordinate that marks real nodes
(VGG layers narrower than the widest are NaN-padded in the SNP dataset). Evaluating a masked
readout never re-runs the backbone: :class:`FeatureCache` holds, per site of the test split, the
readout's inputs once (pooled node inputs for ``seqpool``/``mean``, per-node fields for
``flatten``), so one evaluation is one masked product, batched over several masks.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import xarray as xr

from statmech_nn.errors import SchemaError, StatmechError, ThresholdError
from statmech_nn.naming import check_theta
from statmech_nn.order.clusters import greedy_clusters
from statmech_nn.order.schema import node_matrices, valid_nodes

if TYPE_CHECKING:
    import torch

VARIANTS = ("diagonal", "cluster")
CACHE_SCHEMA = "statmech-nn.andc-cache/1"

__all__ = [
    "VARIANTS",
    "FeatureCache",
    "SiteFeatures",
    "ThresholdError",
    "andc_mask",
    "diagonals",
    "expand_mask",
    "keep_from_diagonals",
    "mask_weight",
    "pruned_fraction",
    "random_keep",
    "random_mask",
    "retrain_masked",
    "site_features",
    "theta_per_layer",
]


# -- masks ---------------------------------------------------------------------------------------


def theta_per_layer(theta: float | Sequence[float] | Mapping[int, float], layers: Sequence[int]):
    """One checked threshold per layer, as a float array aligned with ``layers``.

    ``theta`` is one global value, a sequence with one value per layer (in ``layers`` order), or
    a mapping ``{layer: theta}`` covering every layer. Each must lie in (0, 1).
    """
    layers = [int(v) for v in layers]
    if isinstance(theta, xr.DataArray):
        theta = {int(k): float(v) for k, v in zip(theta["layer"].values, theta.values, strict=True)}
    if isinstance(theta, Mapping):
        missing = [layer for layer in layers if layer not in theta]
        if missing:
            raise ThresholdError(f"no threshold for layers {missing}; give one per layer {layers}")
        values = [theta[layer] for layer in layers]
    elif isinstance(theta, str | bytes) or not isinstance(theta, Iterable):
        values = [theta] * len(layers)
    else:
        values = list(theta)
        if len(values) != len(layers):
            raise ThresholdError(
                f"{len(values)} thresholds for {len(layers)} layers {layers}; give one per layer "
                "or a single global value"
            )
    return np.array([check_theta(v) for v in values], dtype=np.float64)


def diagonals(snp: xr.Dataset, kind: str = "ff") -> xr.DataArray:
    """``M_n[j, j]`` of every node: dims ``(layer, node, label_out)``, NaN for padded nodes."""
    matrices = node_matrices(snp, kind)
    diag = np.diagonal(matrices.values, axis1=2, axis2=3)
    coords = {k: v for k, v in matrices.coords.items() if set(v.dims) <= {"layer", "node"}}
    coords["label_out"] = matrices["label_out"]
    return xr.DataArray(diag, dims=("layer", "node", "label_out"), coords=coords)


def keep_from_diagonals(diag: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """The diagonal ANDC rule on raw arrays: ``diag[layer, node, label] > theta[layer]``."""
    return np.asarray(diag) > np.asarray(theta, dtype=np.float64)[:, None, None]


def andc_mask(
    snp: xr.Dataset,
    theta: float | Sequence[float] | Mapping[int, float] = 0.3,
    kind: str = "ff",
    variant: Literal["diagonal", "cluster"] = "diagonal",
    min_cluster_size: int = 1,
) -> xr.DataArray:
    """ANDC readout mask of site kind ``kind``: ``True`` where connection node -> label is kept.

    ``theta`` is global or per layer (see :func:`theta_per_layer`); ``variant`` is ``diagonal``
    (keep ``j`` iff ``B_n[j, j]``) or ``cluster`` (keep the labels of ``n``'s clusters of at
    least ``min_cluster_size`` labels). Dims ``(layer, node, label_out)``.
    """
    if variant not in VARIANTS:
        raise StatmechError(f"unknown ANDC variant {variant!r}; choose one of {VARIANTS}")
    matrices = node_matrices(snp, kind)
    layers = [int(v) for v in matrices["layer"].values]
    thetas = theta_per_layer(theta, layers)
    valid = valid_nodes(matrices)
    values = matrices.values
    if variant == "diagonal":
        keep = keep_from_diagonals(np.diagonal(values, axis1=2, axis2=3), thetas)
    else:
        binary = values > thetas[:, None, None, None]
        cluster = greedy_clusters(binary)
        sizes = _cluster_sizes(cluster)
        keep = (cluster >= 0) & (sizes >= int(min_cluster_size))
    keep &= valid.values[:, :, None]
    coords = {k: v for k, v in matrices.coords.items() if set(v.dims) <= {"layer", "node"}}
    coords["label_out"] = matrices["label_out"]
    coords["valid"] = (("layer", "node"), valid.values)
    return xr.DataArray(
        keep,
        dims=("layer", "node", "label_out"),
        coords=coords,
        name=f"andc_{kind}",
        attrs={
            "kind": kind,
            "variant": variant,
            "theta": [float(t) for t in thetas],
            "min_cluster_size": int(min_cluster_size),
        },
    )


def _cluster_sizes(cluster: np.ndarray) -> np.ndarray:
    """Size of the cluster each label belongs to (0 for labels in no cluster)."""
    n_labels = cluster.shape[-1]
    flat = cluster.reshape(-1, n_labels)
    onehot = flat[:, :, None] == np.arange(n_labels)[None, None, :]
    counts = onehot.sum(axis=1)
    sizes = np.take_along_axis(counts, np.where(flat >= 0, flat, 0), axis=1)
    return np.where(flat >= 0, sizes, 0).reshape(cluster.shape)


def random_keep(keep: np.ndarray, rng: np.random.Generator, draws: int = 1) -> np.ndarray:
    """Random masks with the same number of kept labels per row as ``keep[..., labels]``.

    Returns ``(draws, *keep.shape)``; each row keeps ``keep[...].sum(-1)`` labels drawn uniformly
    without replacement.
    """
    keep = np.asarray(keep, dtype=bool)
    counts = keep.sum(-1)
    scores = rng.random((draws, *keep.shape))
    ranks = scores.argsort(-1).argsort(-1)
    return ranks < counts[None, ..., None]


def random_mask(mask: xr.DataArray, seed: int = 0, draws: int = 1) -> xr.DataArray:
    """The random control: ``draws`` seeded masks keeping as many connections per node as ``mask``.

    Dims ``("draw", *mask.dims)``. Padded (invalid) nodes keep nothing, as in ``mask``.
    """
    rng = np.random.default_rng(seed)
    values = random_keep(mask.values, rng, draws)
    out = xr.DataArray(
        values,
        dims=("draw", *mask.dims),
        coords={**{k: v for k, v in mask.coords.items()}, "draw": np.arange(draws)},
        name=f"random_{mask.name}" if mask.name else "random_mask",
        attrs={**mask.attrs, "control": "random", "seed": int(seed)},
    )
    return out


def pruned_fraction(mask: xr.DataArray, keep_dims: Sequence[str] = ()) -> float | xr.DataArray:
    """``1 - kept / all`` over the connections of real nodes; per ``keep_dims`` if given.

    With no ``keep_dims`` a float over everything (a ``draw`` dim is averaged like any other:
    random draws keep the same counts, so it changes nothing).
    """
    kept = mask.astype(np.float64)
    if "valid" in mask.coords:
        total = xr.ones_like(kept) * mask.coords["valid"]
    else:
        total = xr.ones_like(kept)
    dims = [d for d in mask.dims if d not in keep_dims]
    frac = 1.0 - kept.sum(dims) / total.sum(dims)
    if not keep_dims:
        return float(frac)
    return frac.drop_vars([c for c in frac.coords if c not in frac.dims], errors="ignore")


# -- masked readout weights ----------------------------------------------------------------------


def _as_tensor(mask: Any) -> torch.Tensor:
    import torch

    if isinstance(mask, xr.DataArray):
        mask = mask.values
    return torch.as_tensor(np.asarray(mask, dtype=bool))


def expand_mask(mask: Any, weight_shape: Sequence[int], tokens_major: bool = False) -> torch.Tensor:
    """A node -> label mask ``[nodes, labels]`` expanded to the shape of a readout weight.

    ``weight_shape`` is ``[labels, nodes]`` (seqpool, mean), ``[labels, nodes, tokens]`` or
    ``[labels, nodes * tokens]`` (flatten; node-major ``n * T + t`` unless ``tokens_major``, where
    the flat index is ``t * N + n``). For flatten every token position of a node shares its mask.
    """
    m = _as_tensor(mask)
    n_nodes, n_labels = m.shape
    shape = tuple(int(s) for s in weight_shape)
    if shape[0] != n_labels:
        raise SchemaError(f"readout weight {shape} has {shape[0]} labels, the mask {n_labels}")
    mt = m.T
    if len(shape) == 3 and shape[1] == n_nodes:
        return mt[:, :, None].expand(shape).clone()
    if len(shape) == 2 and shape[1] == n_nodes:
        return mt.clone()
    if len(shape) == 2 and shape[1] % n_nodes == 0:
        tokens = shape[1] // n_nodes
        if tokens_major:
            return mt[:, None, :].expand(n_labels, tokens, n_nodes).reshape(shape).clone()
        return mt[:, :, None].expand(n_labels, n_nodes, tokens).reshape(shape).clone()
    raise SchemaError(f"readout weight of shape {shape} does not fit a mask of {tuple(m.shape)}")


def mask_weight(weight: torch.Tensor, mask: Any, tokens_major: bool = False) -> torch.Tensor:
    """``weight`` with the cut connections set to zero (a new tensor; see :func:`expand_mask`)."""
    full = expand_mask(mask, weight.shape, tokens_major).to(weight.device)
    return weight * full.to(weight.dtype)


def retrain_masked(
    weight: torch.Tensor,
    mask: torch.Tensor,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    epochs: int = 5,
    lr: float = 0.01,
    momentum: float = 0.9,
    weight_decay: float = 1e-3,
    batch_size: int = 128,
    seed: int = 0,
) -> torch.Tensor:
    """Short retraining of a bias-free linear readout under a mask ([AFCC]).

    ``logits = inputs @ (W * mask).T`` with ``weight``/``mask`` of shape ``[labels, in]``
    (use :func:`expand_mask` for a node mask) and ``inputs [samples, in]`` (pooled node inputs,
    or flattened activations in the weight's layout). SGD with Nesterov momentum, cross-entropy;
    the mask is re-applied to the weight after every optimiser step, so cut weights stay exactly
    zero. Returns the new weight.
    """
    import torch

    mask = mask.to(torch.bool)
    if mask.shape != weight.shape:
        raise SchemaError(f"mask {tuple(mask.shape)} and weight {tuple(weight.shape)} differ")
    gen = torch.Generator().manual_seed(seed)
    w = (weight.detach().clone() * mask).requires_grad_(True)
    opt = torch.optim.SGD(
        [w], lr=lr, momentum=momentum, nesterov=momentum > 0, weight_decay=weight_decay
    )
    inputs = inputs.to(w.dtype)
    n = inputs.shape[0]
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            loss = torch.nn.functional.cross_entropy(inputs[idx] @ w.T, labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                w.mul_(mask)
    return w.detach()


# -- the feature cache ---------------------------------------------------------------------------


@dataclass
class SiteFeatures:
    """What a site's readout sees on the test split, enough to evaluate any mask.

    ``form="pooled"`` (seqpool, mean): ``inputs[b, n]`` are the pooled node inputs and
    ``weight[j, n]`` the readout; ``logits = inputs @ (weight * mask.T).T``. Masking the linear
    layer leaves seqpool's pooling weights (computed from all nodes) unchanged, so this is exact.
    ``form="field"`` (flatten): ``inputs[j, b, n] = f_n(b, j)``, the per-node fields (stored
    label-major so a mask is one batched product); ``logits[b, j] = sum_n mask[n, j] f_n(b, j)``.
    """

    form: Literal["pooled", "field"]
    inputs: np.ndarray
    weight: np.ndarray | None = None

    @property
    def n_nodes(self) -> int:
        return int(self.inputs.shape[-1])

    @property
    def n_labels(self) -> int:
        return int(self.weight.shape[0] if self.form == "pooled" else self.inputs.shape[0])

    def logits(self, masks: np.ndarray) -> np.ndarray:
        """Logits ``[k, b, j]`` for masks ``[k, n, j]`` (or ``[b, j]`` for one mask ``[n, j]``)."""
        masks = np.asarray(masks)
        single = masks.ndim == 2
        m = masks[None] if single else masks
        m = m.astype(np.float32, copy=False)
        if self.form == "pooled":
            wt = np.asarray(self.weight, dtype=np.float32).T
            out = np.matmul(np.asarray(self.inputs, dtype=np.float32), wt[None] * m)
        else:
            fields = np.asarray(self.inputs, dtype=np.float32)
            per_label = np.matmul(fields, m.transpose(2, 1, 0))
            out = per_label.transpose(2, 1, 0)
        return out[0] if single else out

    def accuracy(self, masks: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """Top-1 accuracy for each mask ``[k, n, j]`` (a float for one mask ``[n, j]``)."""
        logits = self.logits(masks)
        correct = logits.argmax(-1) == np.asarray(labels)
        return correct.mean(-1)

    def full_mask(self) -> np.ndarray:
        return np.ones((self.n_nodes, self.n_labels), dtype=bool)


@dataclass
class FeatureCache:
    """Per-site readout inputs of one split (``sites[layer]``) and its true ``labels``.

    Saved as ``.npy`` files plus ``meta.json`` in a folder and loaded memory-mapped, so large
    caches stay on disk and worker processes share the page cache. No pickles.
    """

    labels: np.ndarray
    sites: dict[int, SiteFeatures]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def layers(self) -> list[int]:
        return sorted(self.sites)

    def accuracy(self, layer: int, masks: np.ndarray) -> np.ndarray:
        """Accuracy of the ``layer`` readout under ``masks`` (see :meth:`SiteFeatures.logits`)."""
        return self.sites[int(layer)].accuracy(masks, self.labels)

    def base_accuracy(self) -> dict[int, float]:
        """Unmasked readout accuracy per layer."""
        return {
            layer: float(site.accuracy(site.full_mask(), self.labels))
            for layer, site in self.sites.items()
        }

    def save(self, folder: str | Path) -> Path:
        """Write the cache to ``folder`` (created); returns it."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        np.save(folder / "labels.npy", np.asarray(self.labels, dtype=np.int64))
        forms = {}
        for layer, site in self.sites.items():
            np.save(folder / f"layer{layer}_inputs.npy", np.asarray(site.inputs, np.float32))
            if site.weight is not None:
                np.save(folder / f"layer{layer}_weight.npy", np.asarray(site.weight, np.float32))
            forms[str(layer)] = site.form
        meta = {**self.meta, "schema": CACHE_SCHEMA, "forms": forms}
        tmp = folder / "meta.json.tmp"
        tmp.write_text(json.dumps(meta, indent=2, sort_keys=True), encoding="utf-8")
        tmp.replace(folder / "meta.json")
        return folder

    @classmethod
    def load(cls, folder: str | Path, mmap: bool = True) -> FeatureCache:
        """Read a cache written by :meth:`save` (memory-mapped unless ``mmap=False``)."""
        folder = Path(folder)
        meta_path = folder / "meta.json"
        if not meta_path.is_file():
            raise SchemaError(f"{folder} holds no ANDC feature cache (no meta.json)")
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("schema") != CACHE_SCHEMA:
            raise SchemaError(f"{meta_path}: schema {meta.get('schema')!r}, not {CACHE_SCHEMA}")
        mode = "r" if mmap else None
        labels = np.load(folder / "labels.npy", allow_pickle=False)
        sites = {}
        for layer_s, form in meta.pop("forms").items():
            layer = int(layer_s)
            ipath = folder / f"layer{layer}_inputs.npy"
            inputs = np.load(ipath, mmap_mode=mode, allow_pickle=False)
            wpath = folder / f"layer{layer}_weight.npy"
            weight = np.load(wpath, allow_pickle=False) if wpath.is_file() else None
            sites[layer] = SiteFeatures(form, inputs, weight)
        meta.pop("schema", None)
        return cls(labels=labels, sites=sites, meta=meta)


def site_features(
    activations: torch.Tensor,
    readout: Literal["seqpool", "mean", "flatten"],
    weight: torch.Tensor,
    pool_weight: torch.Tensor | None = None,
    pool_bias: torch.Tensor | float | None = None,
    tokens_major: bool = False,
) -> SiteFeatures:
    """Readout inputs of one site from its activations ``a[b, t, n]`` (METHODS.md sections 3-4).

    ``seqpool``: ``w = softmax_t(a . g + g0)``, inputs ``z = sum_t w_t a_t`` (``g = pool_weight``
    ``[n]``, ``g0 = pool_bias``); ``mean``: token mean; ``flatten``: the per-node fields
    ``f_n(b, j) = sum_t W[j, n, t] a[b, t, n]`` with ``weight`` ``[j, n, t]`` or ``[j, n*t]``.
    """
    import torch

    with torch.no_grad():
        return _site_features(
            activations, readout, weight, pool_weight, pool_bias, tokens_major, torch
        )


def _site_features(activations, readout, weight, pool_weight, pool_bias, tokens_major, torch):
    a = activations.detach().to("cpu", torch.float32)
    w = weight.detach().to("cpu", torch.float32)
    if readout == "seqpool":
        if pool_weight is None:
            raise SchemaError("seqpool readout needs pool_weight (g) and pool_bias (g0)")
        g = pool_weight.detach().reshape(-1).to("cpu", torch.float32)
        g0 = torch.as_tensor(0.0 if pool_bias is None else pool_bias).detach()
        g0 = g0.to("cpu", torch.float32)
        pool = torch.softmax(a @ g + g0.reshape(()), dim=1)
        inputs = torch.einsum("bt,btn->bn", pool, a)
        return SiteFeatures("pooled", inputs.numpy(), w.numpy())
    if readout == "mean":
        return SiteFeatures("pooled", a.mean(1).numpy(), w.numpy())
    if readout == "flatten":
        n_labels, (n_tokens, n_nodes) = w.shape[0], a.shape[1:]
        if w.ndim == 2:
            w = (
                w.reshape(n_labels, n_tokens, n_nodes).transpose(1, 2)
                if tokens_major
                else (w.reshape(n_labels, n_nodes, n_tokens))
            )
        fields = torch.einsum("btn,jnt->jbn", a, w)
        return SiteFeatures("field", fields.contiguous().numpy())
    raise StatmechError(f"unknown readout {readout!r}; choose seqpool, mean or flatten")


def random_control_curve(
    cache: FeatureCache,
    diag: np.ndarray,
    thetas: Sequence[float],
    draws: int = 5,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Accuracy vs pruned fraction of ANDC and of the random control over a grid of thresholds.

    ``diag[layer, node, label]`` are the SNP diagonals of ``cache.layers`` (NaN for padding).
    For each global ``theta``: the ANDC mask, ``draws`` random masks with the same per-node counts
    (seeded), their mean accuracy over layers, and the pruned fraction. Returns arrays
    ``theta``, ``fraction``, ``andc_accuracy``, ``random_mean``, ``random_std``.
    """
    rng = np.random.default_rng(seed)
    valid = ~np.isnan(diag).all(-1)
    rows = {k: [] for k in ("theta", "fraction", "andc_accuracy", "random_mean", "random_std")}
    for theta in thetas:
        check_theta(theta)
        keep = keep_from_diagonals(diag, np.full(diag.shape[0], theta)) & valid[..., None]
        rand = random_keep(keep, rng, draws)
        andc_acc, rand_acc = [], []
        for i, layer in enumerate(cache.layers):
            andc_acc.append(float(cache.accuracy(layer, keep[i])))
            rand_acc.append(cache.accuracy(layer, rand[:, i]))
        per_draw = np.mean(rand_acc, axis=0)
        total = valid.sum() * diag.shape[-1]
        rows["theta"].append(float(theta))
        rows["fraction"].append(1.0 - keep.sum() / total if total else math.nan)
        rows["andc_accuracy"].append(float(np.mean(andc_acc)))
        rows["random_mean"].append(float(per_draw.mean()))
        rows["random_std"].append(float(per_draw.std()))
    return {k: np.asarray(v) for k, v in rows.items()}


# -- network-level ANDC ([AFCC] analogue) --------------------------------------------------------


def network_mask(src_labels: np.ndarray, dst_labels: np.ndarray) -> torch.Tensor:
    """``keep[v, u]`` iff node ``u`` of the source site and node ``v`` of the destination site
    recognise a common label (``D_u & D_v`` non-empty); inputs are bool ``[nodes, labels]``."""
    import torch

    src = torch.as_tensor(np.asarray(src_labels, dtype=np.float32))
    dst = torch.as_tensor(np.asarray(dst_labels, dtype=np.float32))
    return (dst @ src.T) > 0


@dataclass(frozen=True)
class Connection:
    """A weight between two consecutive sites: ``module.weight[v, u, ...]`` maps node ``u`` of
    site ``(src_kind, src_layer)`` to node ``v`` of site ``(dst_kind, dst_layer)``."""

    module: str
    src_kind: str
    src_layer: int
    dst_kind: str
    dst_layer: int


def connections(model: torch.nn.Module) -> list[Connection]:
    """The weights network-level ANDC masks, in forward order.

    CCT (sites ``ff``/``ff_hidden``): in block ``i``, ``linear2`` maps the ``ff_hidden`` units of
    block ``i`` to the ``ff`` nodes of block ``i`` (FF output channel ``u`` is block output
    channel ``u``, via the residual sum); ``linear1`` of block ``i + 1`` maps the ``ff`` nodes of
    block ``i`` (its input channels, through attention residual and ``norm1``, which keep the
    channel index) to the ``ff_hidden`` units of block ``i + 1``. The first block's ``linear1``
    has no SNP-analysed source and stays whole; MHA weights are never masked.
    VGG (sites ``conv``): the kernel of conv ``k + 1`` maps the filters of conv ``k`` to its
    own filters ([AFCC]); max-pooling between them is per channel.
    """
    import torch

    sites = model.sites()  # type: ignore[operator]
    kinds = {s.kind for s in sites}
    out: list[Connection] = []
    if "conv" in kinds:
        convs = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)]
        conv_sites = sorted((s for s in sites if s.kind == "conv"), key=lambda s: s.layer)
        prefix = conv_sites[0].module.rsplit(".", 1)[0] + "."
        convs = [n for n in convs if n.startswith(prefix)]
        for k in range(len(conv_sites) - 1):
            out.append(Connection(convs[k + 1], "conv", k, "conv", k + 1))
        return out
    ff = sorted((s for s in sites if s.kind == "ff"), key=lambda s: s.layer)
    for i, site in enumerate(ff):
        out.append(Connection(f"{site.module}.linear2", "ff_hidden", site.layer, "ff", site.layer))
        if i + 1 < len(ff):
            nxt = ff[i + 1]
            linear1 = f"{nxt.module}.linear1"
            out.append(Connection(linear1, "ff", site.layer, "ff_hidden", nxt.layer))
    return out


@functools.cache
def _weight_mask_class() -> type:
    import torch

    class WeightMask(torch.nn.Module):
        """Parametrization ``W -> W * mask`` with ``mask[out, in]`` broadcast over kernel dims."""

        def __init__(self, mask: torch.Tensor) -> None:
            super().__init__()
            self.register_buffer("mask", mask.to(torch.bool))

        def forward(self, weight: torch.Tensor) -> torch.Tensor:
            extra = weight.ndim - self.mask.ndim
            mask = self.mask.reshape(*self.mask.shape, *([1] * extra))
            return weight * mask.to(weight.dtype)

    return WeightMask


def weight_mask(mask: torch.Tensor) -> torch.nn.Module:
    """A parametrization module ``W -> W * mask`` (``mask[out, in]``, broadcast over kernels)."""
    return _weight_mask_class()(mask)


def network_masks(
    snp: xr.Dataset, model: torch.nn.Module, theta: float = 0.3
) -> dict[str, torch.Tensor]:
    """Masks ``{module path: keep[out, in]}`` for :func:`connections` from the SNP diagonals.

    ``D_n = {l : M_n[l, l] > theta}`` per site; raises :class:`SchemaError` when the dataset
    lacks a kind the model's connections need (e.g. ``ff_hidden``: compute SNP with it).
    """
    theta = check_theta(theta)
    labels: dict[str, xr.DataArray] = {}
    out = {}
    for conn in connections(model):
        for kind in (conn.src_kind, conn.dst_kind):
            if kind not in labels:
                if f"snp_{kind}" not in snp:
                    raise SchemaError(
                        f"network-level ANDC needs SNP matrices of site kind {kind!r} "
                        f"(for {conn.module}); recompute SNP including that kind"
                    )
                labels[kind] = diagonals(snp, kind) > theta
        weight = model.get_submodule(conn.module).weight
        n_out, n_in = weight.shape[:2]
        src = labels[conn.src_kind].sel(layer=conn.src_layer).values[:n_in]
        dst = labels[conn.dst_kind].sel(layer=conn.dst_layer).values[:n_out]
        if src.shape[0] != n_in or dst.shape[0] != n_out:
            raise SchemaError(
                f"{conn.module}: weight {tuple(weight.shape)} does not match the SNP node counts "
                f"({dst.shape[0]} x {src.shape[0]}); is the SNP from this model?"
            )
        out[conn.module] = network_mask(src, dst)
    return out


def apply_network_masks(model: torch.nn.Module, masks: Mapping[str, torch.Tensor]) -> None:
    """Register :func:`weight_mask` parametrizations (undo with :func:`remove_network_masks`)."""
    from torch.nn.utils import parametrize

    for path, mask in masks.items():
        module = model.get_submodule(path)
        parametrize.register_parametrization(
            module, "weight", weight_mask(mask.to(module.weight.device))
        )


def remove_network_masks(model: torch.nn.Module, permanent: bool = True) -> None:
    """Remove the masks; ``permanent=True`` keeps the masked (zeroed) weights in place."""
    from torch.nn.utils import parametrize

    for module in model.modules():
        if parametrize.is_parametrized(module, "weight") and any(
            isinstance(p, _weight_mask_class()) for p in module.parametrizations["weight"]
        ):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=permanent)


def masked_weight_fraction(model: torch.nn.Module, masks: Mapping[str, torch.Tensor]) -> float:
    """Fraction of the masked modules' weight elements that the masks remove."""
    removed = total = 0
    for path, mask in masks.items():
        weight = model.get_submodule(path).weight
        per_pair = int(np.prod(weight.shape[2:])) if weight.ndim > 2 else 1
        removed += int((~mask).sum()) * per_pair
        total += mask.numel() * per_pair
    return removed / total if total else 0.0
