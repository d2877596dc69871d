"""Per-family site discovery for transformers we did not write (docs/methods.md section 10).

Each supported attention implementation is recognised by what its ``forward`` does, without
importing its library: where the concatenated per-head context (before the output projection)
is a module's input, the ``mha`` site is a forward pre-hook there; torch's
``nn.MultiheadAttention`` gets an identity hook point (:mod:`statmech_nn.foreign.capture`).

- Hugging Face ``transformers``: BERT / RoBERTa (input of ``attention.output.dense``), DistilBERT
  (``out_lin``), ViT / DeiT (``o_proj``), GPT-2 (``attn.c_proj``); cross-attention is skipped.
- timm ``Attention`` (ViT, DeiT): input of ``attn.proj`` (of ``attn.norm`` when the model
  normalises or gates the context before the projection).
- torch ``nn.MultiheadAttention`` (torchvision ``VisionTransformer``,
  ``nn.TransformerEncoderLayer``): output of the ``heads_out`` hook point.

A block is the nearest ancestor of an attention module that is an item of an ``nn.ModuleList`` /
``nn.Sequential``; blocks are numbered in module order. Per block: ``block{i}.mha`` (heads = the
module's head count) and ``block{i}.ff``, the block output (an encoder layer's ``block_out``).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from statmech_nn.foreign.capture import BLOCK_OUT, HEADS_OUT, install_hook_points
from statmech_nn.sites import Site

_PROJECTIONS = ("o_proj", "out_proj", "c_proj", "out_lin")
_HEAD_COUNTS = ("num_attention_heads", "num_heads", "n_heads")


@dataclass(frozen=True)
class AttentionPoint:
    """Where an attention module's per-head context is read, relative to the module's path.

    ``post`` are the relative paths whose outputs are after the projection (refused as heads).
    """

    module: str
    hook: str
    heads: int
    post: tuple[str, ...]


def _library(module: nn.Module) -> str:
    return type(module).__module__.split(".")[0]


def _heads(module: nn.Module) -> int | None:
    for attr in _HEAD_COUNTS:
        value = getattr(module, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    config = getattr(module, "config", None)
    value = getattr(config, "num_attention_heads", None)
    return value if isinstance(value, int) and value > 0 else None


def hf_point(module: nn.Module) -> AttentionPoint | None:
    """A Hugging Face self-attention block whose projection is called as a module."""
    name = type(module).__name__
    if _library(module) != "transformers" or not name.endswith("Attention"):
        return None
    if "Cross" in name or getattr(module, "is_cross_attention", False):
        return None
    inner, out = getattr(module, "self", None), getattr(module, "output", None)
    if isinstance(inner, nn.Module) and isinstance(getattr(out, "dense", None), nn.Module):
        heads = _heads(inner)
        if heads is None:
            return None
        return AttentionPoint("output.dense", "input", heads, ("", "output", "output.dense"))
    for proj in _PROJECTIONS:
        if isinstance(getattr(module, proj, None), nn.Module) and _heads(module):
            return AttentionPoint(proj, "input", _heads(module), ("", proj))  # type: ignore[arg-type]
    return None


def timm_point(module: nn.Module) -> AttentionPoint | None:
    """timm's ``Attention``: ``x = proj(norm(context) * gate)``."""
    if _library(module) != "timm" or type(module).__name__ != "Attention":
        return None
    if not isinstance(getattr(module, "proj", None), nn.Linear) or not _heads(module):
        return None
    plain = isinstance(module.norm, nn.Identity) and getattr(module, "gate", None) is None
    return AttentionPoint("proj" if plain else "norm", "input", _heads(module), ("", "proj"))  # type: ignore[arg-type]


def torch_point(module: nn.Module) -> AttentionPoint | None:
    """``nn.MultiheadAttention``: the ``heads_out`` hook point (installed by the caller)."""
    if not isinstance(module, nn.MultiheadAttention):
        return None
    return AttentionPoint(HEADS_OUT, "output", module.num_heads, ("", "out_proj"))


RECOGNISERS = (hf_point, timm_point, torch_point)


def attention_point(module: nn.Module) -> AttentionPoint | None:
    """The per-head read point of ``module`` if it is a supported attention, else None."""
    for recognise in RECOGNISERS:
        point = recognise(module)
        if point is not None and point.heads:
            return point
    return None


@dataclass(frozen=True)
class Block:
    """One transformer block: its path, its attention's path and read point."""

    index: int
    path: str
    attention: str
    point: AttentionPoint

    def sites(self, modules: dict[str, nn.Module]) -> list[Site]:
        """``block{i}.mha`` and ``block{i}.ff`` of this block."""
        join = f"{self.attention}.{self.point.module}" if self.attention else self.point.module
        ff = self.path if self.path else ""
        if isinstance(modules.get(ff), nn.TransformerEncoderLayer):
            ff = f"{ff}.{BLOCK_OUT}" if ff else BLOCK_OUT
        i = self.index
        return [
            Site(f"block{i}.mha", "mha", i, join, self.point.hook, heads=self.point.heads),
            Site(f"block{i}.ff", "ff", i, ff),
        ]


def _block_path(path: str, modules: dict[str, nn.Module]) -> str:
    """The nearest ancestor of ``path`` that is an item of a ModuleList / Sequential."""
    parts = path.split(".")
    for end in range(len(parts) - 1, 0, -1):
        parent = ".".join(parts[: end - 1])
        if isinstance(modules.get(parent), nn.ModuleList | nn.Sequential):
            return ".".join(parts[:end])
    return ".".join(parts[:-1])


def find_blocks(model: nn.Module) -> list[Block]:
    """The blocks of ``model`` with a supported attention, one attention per block, in order."""
    install_hook_points(model)
    modules = dict(model.named_modules())
    blocks: list[Block] = []
    seen: set[str] = set()
    for path, module in modules.items():
        point = attention_point(module)
        if point is None or not path:
            continue
        block = _block_path(path, modules)
        if block in seen or any(path.startswith(b.attention + ".") for b in blocks):
            continue
        seen.add(block)
        blocks.append(Block(len(blocks), block, path, point))
    return blocks


def family_sites(model: nn.Module) -> list[Site]:
    """``block{i}.mha`` / ``block{i}.ff`` of every block of a supported family ([] if none)."""
    modules: dict[str, nn.Module] | None = None
    sites: list[Site] = []
    for block in find_blocks(model):
        modules = modules or dict(model.named_modules())
        sites += block.sites(modules)
    return sites
