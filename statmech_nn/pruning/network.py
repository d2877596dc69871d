"""Network-level ANDC masks ([AFCC] analogue, docs/methods.md section 8) on a model's weights.

Between consecutive sites the weight from node ``u`` to node ``v`` is kept iff ``D_u`` and
``D_v`` (the labels each recognises, ``M_n[l, l] > theta``) share a label. :func:`connections`
names the masked weights of a model, :func:`network_masks` computes the masks from an SNP
dataset, and :func:`apply_network_masks` registers them as parametrizations ``W -> W * mask``.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import xarray as xr

from statmech_nn.errors import SchemaError
from statmech_nn.naming import check_theta, exceeds
from statmech_nn.pruning.masks import diagonals

if TYPE_CHECKING:
    import torch
    from torch import nn


class MissingSnpSitesError(SchemaError):
    """An SNP tensor without the site kinds or layers that network-level ANDC needs."""


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

        mask: torch.Tensor

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
                labels[kind] = exceeds(diagonals(snp, kind), theta)
        weight = _weight_of(model, conn.module)
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


def _weight_of(model: torch.nn.Module, path: str) -> torch.Tensor:
    """The ``weight`` tensor of the module at ``path``."""
    return cast("torch.Tensor", model.get_submodule(path).weight)


def apply_network_masks(model: torch.nn.Module, masks: Mapping[str, torch.Tensor]) -> None:
    """Register :func:`weight_mask` parametrizations (undo with :func:`remove_network_masks`)."""
    from torch.nn.utils import parametrize

    for path, mask in masks.items():
        module = model.get_submodule(path)
        parametrize.register_parametrization(
            module, "weight", weight_mask(mask.to(_weight_of(model, path).device))
        )


def remove_network_masks(model: torch.nn.Module, permanent: bool = True) -> None:
    """Remove the masks; ``permanent=True`` keeps the masked (zeroed) weights in place."""
    from torch.nn.utils import parametrize

    for module in model.modules():
        if parametrize.is_parametrized(module, "weight") and any(
            isinstance(p, _weight_mask_class())
            for p in cast("Any", module.parametrizations)["weight"]
        ):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=permanent)


def _pair_size(model: torch.nn.Module, path: str) -> int:
    """Weight elements per ``(v, u)`` pair of ``path``'s weight: the kernel size (1 for linear)."""
    weight = _weight_of(model, path)
    return int(np.prod(weight.shape[2:])) if weight.ndim > 2 else 1


def masked_weight_fraction(model: torch.nn.Module, masks: Mapping[str, torch.Tensor]) -> float:
    """Fraction of the masked modules' weight elements that the masks remove."""
    removed = sum(removed_weights(model, masks).values())
    total = sum(mask.numel() * _pair_size(model, path) for path, mask in masks.items())
    return removed / total if total else 0.0


def required_sites(model: nn.Module) -> dict[str, list[int]]:
    """``{site kind: layers}`` whose SNP matrices the model's masked connections need."""
    need: dict[str, set[int]] = {}
    for conn in connections(model):
        need.setdefault(conn.src_kind, set()).add(conn.src_layer)
        need.setdefault(conn.dst_kind, set()).add(conn.dst_layer)
    return {kind: sorted(layers) for kind, layers in need.items()}


def _has_layer(snp: xr.Dataset, kind: str, layer: int) -> bool:
    if f"snp_{kind}" not in snp or layer not in set(int(v) for v in snp["layer"].values):
        return False
    return not bool(np.isnan(snp[f"snp_{kind}"].sel(layer=layer).values).all())


def check_snp_sites(
    snp: xr.Dataset, model: nn.Module, run_id: str = "RUN_ID", snp_run_id: str = ""
) -> None:
    """Raise :class:`MissingSnpSitesError` unless ``snp`` covers :func:`required_sites`.

    The message names the ``statmech-nn snp`` command that computes what is missing.
    """
    need = required_sites(model)
    missing = [
        f"{kind} layer {layer}"
        for kind, layers in need.items()
        for layer in layers
        if not _has_layer(snp, kind, layer)
    ]
    if not missing:
        return
    have = sorted(str(v)[4:] for v in snp.data_vars if str(v).startswith("snp_"))
    which = f"SNP run {snp_run_id}" if snp_run_id else "the SNP tensor"
    raise MissingSnpSitesError(
        f"network-level ANDC needs SNP matrices of {', '.join(missing)}, but {which} has site "
        f"kinds {have}; run `statmech-nn snp {run_id} --sites {','.join(need)}` first "
        "(prune then uses the newest SNP run, or pass its id with --snp-run)"
    )


def random_network_masks(
    masks: Mapping[str, torch.Tensor], seed: int = 0
) -> dict[str, torch.Tensor]:
    """The random control: per module, as many kept ``(v, u)`` pairs as ``masks``, chosen
    uniformly (seeded), so the same number of weights is removed from every layer."""
    import torch

    gen = torch.Generator().manual_seed(int(seed))
    out = {}
    for path, mask in masks.items():
        kept = int(mask.sum())
        order = torch.randperm(mask.numel(), generator=gen)
        flat = torch.zeros(mask.numel(), dtype=torch.bool)
        flat[order[:kept]] = True
        out[path] = flat.reshape(mask.shape).to(mask.device)
    return out


def removed_weights(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> dict[str, int]:
    """Weight elements each mask removes (cut ``(v, u)`` pairs times the kernel size)."""
    return {
        path: int((~mask.bool()).sum()) * _pair_size(model, path) for path, mask in masks.items()
    }
