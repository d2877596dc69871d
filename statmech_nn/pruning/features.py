"""Masked-readout evaluation without re-running the backbone: the ANDC feature cache.

:class:`FeatureCache` holds, per site of a split, the readout's inputs once (pooled node inputs
for ``seqpool``/``mean``, per-node fields for ``flatten``), so one evaluation of an ANDC mask is
one masked product, batched over several masks. :func:`site_features` computes them from a site's
activations (docs/methods.md sections 3-4).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from statmech_nn.errors import ConfigError, SchemaError
from statmech_nn.fileio import atomic_write_text

if TYPE_CHECKING:
    import torch

CACHE_SCHEMA = "statmech-nn.andc-cache/1"


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

    def __post_init__(self) -> None:
        if self.form == "pooled" and self.weight is None:
            raise SchemaError("pooled site features need the readout weight [labels, nodes]")

    @property
    def n_nodes(self) -> int:
        """Nodes of the site (the readout's inputs)."""
        return int(self.inputs.shape[-1])

    @property
    def n_labels(self) -> int:
        """Output labels of the readout."""
        if self.form == "pooled" and self.weight is not None:
            return int(self.weight.shape[0])
        return int(self.inputs.shape[0])

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
        """The mask that keeps every connection (the unpruned readout)."""
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
        atomic_write_text(folder / "meta.json", json.dumps(meta, indent=2, sort_keys=True))
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
        mode: Literal["r"] | None = "r" if mmap else None
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
    mask: torch.Tensor | None = None,
) -> SiteFeatures:
    """Readout inputs of one site from its activations ``a[b, t, n]`` (methods.md sections 3-4).

    ``seqpool``: ``w = softmax_t(a . g + g0)``, inputs ``z = sum_t w_t a_t`` (``g = pool_weight``
    ``[n]``, ``g0 = pool_bias``); ``mean``: token mean; ``flatten``: the per-node fields
    ``f_n(b, j) = sum_t W[j, n, t] a[b, t, n]`` with ``weight`` ``[j, n, t]`` or ``[j, n*t]``.
    ``mask [b, t]``: the real positions of text (pooling over them only, zeros at padding for
    ``flatten``; ``statmech_nn.text_masks``).
    """
    import torch

    with torch.no_grad():
        return _site_features(
            activations, readout, weight, pool_weight, pool_bias, tokens_major, torch, mask
        )


def _site_features(
    activations, readout, weight, pool_weight, pool_bias, tokens_major, torch, mask=None
):
    from statmech_nn.text_masks import masked_mean, masked_seqpool, zero_padding

    a = activations.detach().to("cpu", torch.float32)
    if mask is not None:
        mask = mask.detach().to("cpu")
        if readout == "seqpool":
            g = pool_weight.detach().reshape(-1).to("cpu", torch.float32)
            g0 = torch.as_tensor(0.0 if pool_bias is None else pool_bias).detach().float()
            inputs = masked_seqpool(a, mask, g, g0.reshape(()))
            return SiteFeatures("pooled", inputs.numpy(), weight.detach().cpu().float().numpy())
        if readout == "mean":
            inputs = masked_mean(a, mask)
            return SiteFeatures("pooled", inputs.numpy(), weight.detach().cpu().float().numpy())
        a = zero_padding(a, mask)
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
    raise ConfigError(f"unknown readout {readout!r}; choose seqpool, mean or flatten")
