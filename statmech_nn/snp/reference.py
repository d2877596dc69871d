"""The literal SNP procedure (docs/methods.md section 4): slow and simple, the yardstick for tests.

For each node (or head): zero every other input of the readout, rerun the readout over all test
samples, and average the resulting logits per true label. ``post_pool`` zeroes the other pooled
features instead of the other inputs. Everything runs in float64 on a copy of the readout. Text
sites pass their padding mask to the readout itself (``readout(a, mask)``), which pools over real
positions only: the reference applies the masking rule at the readout, not in the SNP algebra.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from statmech_nn.batches import padding_mask, split_batch
from statmech_nn.readout import Readout, SeqPoolReadout, make_loader, resolve_device
from statmech_nn.readout.modules import site_mask
from statmech_nn.sites import ActivationCapture, Site
from statmech_nn.snp.engine import SiteMatrices, check_options, head_count

__all__ = [
    "collect_activations",
    "collect_masked_activations",
    "reference_head_matrices",
    "reference_matrices",
    "reference_node_matrices",
    "silenced_logits",
]


def collect_masked_activations(
    model: nn.Module,
    sites: Sequence[Site],
    data: Dataset | DataLoader,
    batch_size: int = 128,
    device: str | torch.device | None = None,
) -> tuple[dict[str, torch.Tensor], torch.Tensor, dict[str, torch.Tensor | None]]:
    """All activations ``{site: [S, T, N]}`` (CPU), labels ``[S]`` and each site's padding mask
    ``[S, T]`` (``None`` for images) of ``data`` (small data)."""
    dev = resolve_device(device)
    model.to(dev)
    was_training = model.training
    model.eval()
    acts: dict[str, list[torch.Tensor]] = {s.name: [] for s in sites}
    masks: dict[str, list[torch.Tensor]] = {s.name: [] for s in sites}
    labels = []
    try:
        with ActivationCapture(model, sites) as capture, torch.no_grad():
            for batch in make_loader(data, batch_size):
                x, y = split_batch(batch, dev)
                out = capture(x)
                for name, a in out.items():
                    acts[name].append(a.cpu())
                    m = site_mask(padding_mask(x), a)
                    if m is not None:
                        masks[name].append(m.cpu())
                labels.append(y.cpu())
    finally:
        model.train(was_training)
    joined = {k: torch.cat(v) if v else None for k, v in masks.items()}
    return {k: torch.cat(v) for k, v in acts.items()}, torch.cat(labels), joined


def collect_activations(
    model: nn.Module,
    sites: Sequence[Site],
    data: Dataset | DataLoader,
    batch_size: int = 128,
    device: str | torch.device | None = None,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """All activations ``{site: [S, T, N]}`` (CPU) and labels ``[S]`` of ``data`` (small data)."""
    acts, labels, _ = collect_masked_activations(model, sites, data, batch_size, device)
    return acts, labels


def silenced_logits(
    readout: Readout,
    a: torch.Tensor,
    keep: torch.Tensor,
    silencing: str = "pre_pool",
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Logits of ``readout`` with the nodes where ``keep`` is 0 silenced (set to zero).

    ``mask`` is the padding mask of text inputs (``None``: every position is real).
    """
    if isinstance(readout, SeqPoolReadout) and silencing == "post_pool":
        return readout.fc(readout.pooled(a, mask) * keep)
    return readout(a * keep, mask)


def _class_means(logits: torch.Tensor, labels: torch.Tensor, num_labels: int) -> torch.Tensor:
    out = torch.zeros(num_labels, logits.shape[1], dtype=logits.dtype)
    for i in range(num_labels):
        rows = logits[labels == i]
        if len(rows):
            out[i] = rows.mean(dim=0)
    return out


def _groups_matrices(
    readout: Readout,
    a: torch.Tensor,
    labels: torch.Tensor,
    num_labels: int,
    silencing: str,
    groups: Sequence[Sequence[int]],
    batch: int,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    ref = copy.deepcopy(readout).double().cpu()
    a = a.double().cpu()
    mask = None if mask is None else mask.cpu()
    out = torch.zeros(len(groups), num_labels, num_labels, dtype=torch.float64)
    with torch.no_grad():
        for g, nodes in enumerate(groups):
            keep = torch.zeros(a.shape[2], dtype=torch.float64)
            keep[list(nodes)] = 1.0
            logits = torch.cat(
                [
                    silenced_logits(
                        ref,
                        a[s : s + batch],
                        keep,
                        silencing,
                        None if mask is None else mask[s : s + batch],
                    )
                    for s in range(0, len(a), batch)
                ]
            )
            out[g] = _class_means(logits, labels.cpu(), num_labels)
    return out


def reference_node_matrices(
    readout: Readout,
    a: torch.Tensor,
    labels: torch.Tensor,
    num_labels: int,
    silencing: str = "pre_pool",
    nodes: Sequence[int] | None = None,
    batch: int = 256,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """``[len(nodes), L, L]`` un-normalised single-node matrices, one readout rerun per node.

    ``mask [S, T]``: the padding mask of text samples (``None``: every position is real).
    """
    check_options("seqpool", silencing)
    nodes = range(a.shape[2]) if nodes is None else nodes
    groups = [[n] for n in nodes]
    return _groups_matrices(readout, a, labels, num_labels, silencing, groups, batch, mask)


def reference_head_matrices(
    readout: Readout,
    a: torch.Tensor,
    labels: torch.Tensor,
    num_labels: int,
    heads: int,
    silencing: str = "pre_pool",
    batch: int = 256,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """``[heads, L, L]`` un-normalised single-head matrices (all nodes of one head kept)."""
    check_options("seqpool", silencing)
    size = a.shape[2] // heads
    groups = [range(h * size, (h + 1) * size) for h in range(heads)]
    return _groups_matrices(readout, a, labels, num_labels, silencing, groups, batch, mask)


def reference_matrices(
    model: nn.Module,
    readouts: Mapping[str, Readout],
    data: Dataset | DataLoader,
    num_labels: int,
    silencing: str = "pre_pool",
    batch_size: int = 128,
    device: str | torch.device | None = None,
) -> dict[str, SiteMatrices]:
    """Same output as :func:`statmech_nn.snp.engine.matrices`, by the literal procedure."""
    sites = [r.site for r in readouts.values()]
    acts, labels, masks = collect_masked_activations(model, sites, data, batch_size, device)  # type: ignore[arg-type]
    counts = torch.bincount(labels, minlength=num_labels)[:num_labels]
    out = {}
    for name, readout in readouts.items():
        a, mask = acts[name], masks[name]
        raw = reference_node_matrices(readout, a, labels, num_labels, silencing, mask=mask)
        heads = head_count(readout.site, a.shape[2])  # type: ignore[arg-type]
        head_raw = (
            reference_head_matrices(readout, a, labels, num_labels, heads, silencing, mask=mask)
            if heads
            else None
        )
        with torch.no_grad():
            ref = copy.deepcopy(readout).cpu()
            accuracy = float((ref(a, mask).argmax(1) == labels).double().mean())
        out[name] = SiteMatrices(readout.site, raw, head_raw, accuracy, counts)  # type: ignore[arg-type]
    return out
