"""Refuse ``:heads=H`` on module sites whose channels cannot be heads (docs/methods.md section 10).

Heads exist only in the concatenated per-head context before an attention's output projection.
A module site with ``heads`` is refused, with the site to use instead, when its channels are
known to come after a projection (the output of an attention module, of its projection, of an
MLP or of its last linear layer), when it hooks torch's ``out_proj`` (never called as a module),
or when its known width does not split into ``H`` equal heads. The residual stream (a block
output, the ``block{i}.ff`` site's module, and the norms that read it) is refused on either hook.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from statmech_nn.errors import ConfigError
from statmech_nn.foreign.capture import BLOCK_OUT
from statmech_nn.foreign.families import attention_point
from statmech_nn.sites import Site

_MLP_NAMES = ("mlp", "ffn", "feed_forward", "feedforward")
_LAST_LINEARS = (("linear1", "linear2"), ("fc1", "fc2"), ("lin1", "lin2"))


def _is_attention_like(module: nn.Module) -> bool:
    """Ours, reference CCTs and timm-likes: ``qkv`` + ``proj`` linears and a head count."""
    return all(isinstance(getattr(module, a, None), nn.Linear) for a in ("qkv", "proj"))


def _last_linear(path: str, module: nn.Module) -> str | None:
    last = None
    for name, child in module.named_modules():
        weight = getattr(child, "weight", None)
        if name and getattr(weight, "ndim", 0) == 2:
            last = f"{path}.{name}" if path else name
    return last


def post_projection(modules: dict[str, nn.Module]) -> set[str]:
    """Module paths whose outputs are known to be after an output projection."""
    post: set[str] = set()
    join = lambda a, b: f"{a}.{b}" if a and b else a or b  # noqa: E731
    for path, module in modules.items():
        name = type(module).__name__
        point = attention_point(module)
        if point is not None:
            post.update(join(path, p) for p in point.post)
        elif _is_attention_like(module):
            post.update({path, join(path, "proj")})
        if _is_mlp(path, module) or (
            name.endswith("Output") and _library(module) == "transformers"
        ):
            post.add(path)
            last = _last_linear(path, module)
            if last:
                post.add(last)
        for first, second in _LAST_LINEARS:
            if hasattr(module, first) and isinstance(getattr(module, second, None), nn.Module):
                post.add(join(path, second))
    return post


def _library(module: nn.Module) -> str:
    return type(module).__module__.split(".")[0]


def _is_norm(module: nn.Module) -> bool:
    """LayerNorm-likes (torch's, its subclasses, RMS norms of other libraries)."""
    return isinstance(module, nn.LayerNorm) or type(module).__name__.endswith(
        ("LayerNorm", "RMSNorm")
    )


def _is_mlp(path: str, module: nn.Module) -> bool:
    """An MLP whose inner norms see hidden units, not the residual stream (timm's ``Mlp``)."""
    name = type(module).__name__
    return path.rsplit(".", 1)[-1] in _MLP_NAMES or any(
        key in name for key in ("Mlp", "MLP", "FFN", "FeedForward")
    )


def _under(path: str, prefixes: set[str]) -> bool:
    return any(path == p or path.startswith(p + ".") for p in prefixes)


def _block_paths(available: Sequence[Site]) -> list[str]:
    """Modules whose output is a block output or an attention output plus the residual: the
    ``ff`` and ``attn_out`` sites' (and an ``nn.TransformerEncoderLayer`` whose ``block_out``
    hook point is the site)."""
    paths: list[str] = []
    for site in available:
        if site.kind in ("ff", "attn_out") and site.name == f"block{site.layer}.{site.kind}":
            paths.append(site.module)
            if site.module.rsplit(".", 1)[-1] == BLOCK_OUT:
                paths.append(site.module.rsplit(".", 1)[0] if "." in site.module else "")
    return paths


def residual_stream(modules: dict[str, nn.Module], available: Sequence[Site]) -> set[str]:
    """Module paths whose input and output are the residual stream of a transformer: the block
    outputs and the norms from the first block on (not those inside an attention before its
    projection, nor inside an MLP)."""
    blocks = _block_paths(available)
    if not blocks:
        return set()
    join = lambda a, b: f"{a}.{b}" if a and b else a or b  # noqa: E731
    inside_attention: set[str] = set()  # attention modules, less their post-projection parts
    after_projection: set[str] = set()
    mlps: set[str] = set()
    for path, module in modules.items():
        point = attention_point(module)
        if point is not None or _is_attention_like(module):
            inside_attention.add(path)
            post = point.post if point is not None else ("proj",)
            after_projection.update(join(path, p) for p in post if p)
        elif _is_mlp(path, module) and path:
            mlps.add(path)
    names = list(modules)
    first = min(names.index(b) for b in blocks if b in modules)
    norms = {
        path
        for path in names[first:]
        if _is_norm(modules[path])
        and not _under(path, mlps)
        and (not _under(path, inside_attention) or _under(path, after_projection))
    }
    return norms | set(blocks)


def _width(module: nn.Module, hook: str) -> int | None:
    """Channels of ``module``'s input / output when its type tells (linear-like, norm, MHA)."""
    if isinstance(module, nn.Linear):
        return module.in_features if hook == "input" else module.out_features
    if type(module).__name__ == "Conv1D" and getattr(module, "weight", None) is not None:
        weight: Any = module.weight
        return int(weight.shape[0 if hook == "input" else 1])  # HF GPT-2 Conv1D
    if isinstance(module, nn.LayerNorm) and len(tuple(module.normalized_shape)) == 1:
        return int(module.normalized_shape[0])
    if isinstance(module, nn.MultiheadAttention):
        return module.embed_dim
    return None


def _instead(path: str, available: Sequence[Site]) -> str:
    """The ``mha`` site nearest to ``path`` (longest shared module prefix), as advice."""
    mha = [s for s in available if s.kind == "mha"]
    if not mha:
        return "the input of the attention's output projection (the per-head context)"

    def shared(site: Site) -> int:
        n = 0
        for a, b in zip(site.module.split("."), path.split("."), strict=False):
            if a != b:
                break
            n += 1
        return n

    best = max(reversed(mha), key=shared)  # outside every block: the last block's
    return f"site {best.name!r} (module {best.module!r}, the per-head context)"


def check_heads(model: nn.Module, site: Site, available: Sequence[Site]) -> Site:
    """``site`` unchanged, or :class:`ConfigError` if its ``heads`` cannot be heads."""
    if not site.heads:
        return site
    modules = dict(model.named_modules())
    module = modules.get(site.module)
    if module is None:
        return site
    label = f"site {site.module!r} with heads={site.heads}"
    parent = modules.get(site.module.rsplit(".", 1)[0]) if "." in site.module else model
    if isinstance(parent, nn.MultiheadAttention) and module is parent.out_proj:
        raise ConfigError(
            f"{label}: nn.MultiheadAttention never calls out_proj as a module; use "
            f"{_instead(site.module, available)}"
        )
    if site.module in residual_stream(modules, available):
        raise ConfigError(
            f"{label}: its channels are the residual stream (a block output or a norm of it), "
            f"after the attention's and the MLP's output projections, so they are not heads; use "
            f"{_instead(site.module, available)}"
        )
    if site.hook == "output" and site.module in post_projection(modules):
        raise ConfigError(
            f"{label}: its channels come after an output projection (attention or MLP output), "
            f"so they are not heads; use {_instead(site.module, available)}"
        )
    width = _width(module, site.hook)
    if width is not None and width % site.heads:
        raise ConfigError(
            f"{label}: its {width} channels do not split into {site.heads} equal heads; use "
            f"{_instead(site.module, available)} or a head count that divides {width}"
        )
    return site
