"""Sites: named places in a network whose activations are read by a readout (methods.md section 3).

A site spec names the sites to read, as a comma-separated string (or a list of items):

- ``all``: every site the model offers (``model.sites()``, or the sites found by
  :func:`auto_sites` for models we did not write: ``vit_pytorch`` / reference CCTs and
  torchvision-style VGGs);
- a site name (``block3.mha``, ``conv4``), a kind (``mha``, ``ff``: every layer of that kind) or a
  layer prefix (``block3``: every site of block 3);
- a module path of any ``nn.Module`` followed by optional ``:``-separated options, e.g.
  ``encoder.layers.1.mlp`` or ``classifier.blocks.0.self_attn.proj:input:heads=4:kind=mha``.
  Options: ``heads=H`` (group the nodes into H equal contiguous heads), ``input`` / ``output``
  (forward pre-hook on the first positional input, or forward hook on the output; default
  output), ``tokens`` / ``channels_first`` (layout; default: ``channels_first`` for 4-D outputs,
  else ``tokens``), ``kind=K`` (default ``module``), ``layer=L`` (default: order of appearance
  among the spec's module sites of that kind). The site's name is the module path.

Activations are captured as ``[batch, position, node]``: tokens ``[B, T, N]`` as they are,
channels-first maps ``[B, N, *spatial]`` as ``[B, prod(spatial), N]``, and 2-D ``[B, N]`` as
``[B, 1, N]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import torch
from torch import nn

from statmech_nn.batches import Inputs, call_model
from statmech_nn.errors import StatmechError, UnknownNameError
from statmech_nn.naming import layer_label_of_site_name

__all__ = [
    "ActivationCapture",
    "Site",
    "SiteNotReachedError",
    "auto_sites",
    "available_sites",
    "layer_label",
    "parse_spec",
    "resolve",
    "to_tokens",
]

LAYOUTS = ("tokens", "channels_first", "auto")
HOOKS = ("output", "input")


@dataclass(frozen=True)
class Site:
    """Where to read activations, and how to lay them out as ``[batch, position, node]``.

    ``hook`` is ``"output"`` (forward hook on ``module``) or ``"input"`` (forward pre-hook, first
    positional input). ``layout`` is ``"tokens"`` for ``[B, T, N]`` tensors and ``"channels_first"``
    for ``[B, N, H, W]`` feature maps (transposed to ``[B, H*W, N]``). ``heads`` groups the nodes
    into equal contiguous heads (node ``c`` belongs to head ``c // (N / heads)``).
    """

    name: str
    kind: str
    layer: int
    module: str
    hook: str = "output"
    layout: str = "tokens"
    heads: int | None = None


class SiteNotReachedError(StatmechError):
    """A site's hook never fired during a forward pass (the module is not used by ``forward``)."""


def layer_label(site: Site) -> str:
    """``block3`` / ``conv4`` from a site name of ours, else ``layer{i}``: used in metric names.

    A site named by its module path (``layer1.0.conv1``) gets ``layer{i}`` even when the path
    looks like a label.
    """
    label = layer_label_of_site_name(site.name) if site.name != site.module else None
    return label or f"layer{site.layer}"


def auto_sites(model: nn.Module) -> list[Site]:
    """Sites with our names for models we did not write.

    Recognised: CCTs with the reference module names (``vit_pytorch.cct``, SHI-Labs code):
    ``block{i}.mha`` (input of ``self_attn.proj``), ``block{i}.attn_out`` (input of ``norm1``),
    ``block{i}.ff_hidden`` (input of ``dropout1``, post-GELU), ``block{i}.ff`` (block output);
    and VGG-style ``features`` stacks (torchvision VGG): ``conv{k}`` at the first ReLU after the
    k-th Conv2d, channels first.
    """
    modules = dict(model.named_modules())
    sites: list[Site] = []
    i = 0
    while f"classifier.blocks.{i}" in modules:
        prefix = f"classifier.blocks.{i}"
        attn = modules.get(f"{prefix}.self_attn")
        heads = getattr(attn, "heads", None) or getattr(attn, "num_heads", None)
        if f"{prefix}.self_attn.proj" in modules:
            sites.append(
                Site(
                    f"block{i}.mha",
                    "mha",
                    i,
                    f"{prefix}.self_attn.proj",
                    "input",
                    heads=int(heads) if heads else None,
                )
            )
        if f"{prefix}.norm1" in modules:
            sites.append(Site(f"block{i}.attn_out", "attn_out", i, f"{prefix}.norm1", "input"))
        if f"{prefix}.dropout1" in modules:
            sites.append(Site(f"block{i}.ff_hidden", "ff_hidden", i, f"{prefix}.dropout1", "input"))
        sites.append(Site(f"block{i}.ff", "ff", i, prefix))
        i += 1
    if sites:
        return sites
    from statmech_nn.foreign import family_sites  # HF, timm, torchvision transformers

    sites = family_sites(model)
    if sites:
        return sites
    features = modules.get("features")
    if isinstance(features, nn.Sequential):
        k = 0
        pending = False
        for name, child in features.named_children():
            if isinstance(child, nn.Conv2d):
                pending = True
            elif pending and isinstance(child, nn.ReLU):
                sites.append(
                    Site(f"conv{k}", "conv", k, f"features.{name}", layout="channels_first")
                )
                k += 1
                pending = False
    return sites


def available_sites(model: nn.Module) -> list[Site]:
    """The named sites of ``model``: ``model.sites()`` when it has one, else :func:`auto_sites`."""
    listed = getattr(model, "sites", None)
    if callable(listed):
        return list(listed())
    return auto_sites(model)


def parse_spec(spec: str | Sequence[str]) -> list[str]:
    """Split a site spec into its items (commas separate items; whitespace is ignored)."""
    items = spec.split(",") if isinstance(spec, str) else [str(s) for s in spec]
    items = [item.strip() for item in items if item.strip()]
    if not items:
        raise UnknownNameError("empty site spec: give site names, kinds, 'all' or module paths")
    return items


def _module_site(
    item: str, modules: dict[str, nn.Module], kind_counts: dict[str, int], available: list[Site]
) -> Site:
    path, *options = item.split(":")
    if path not in modules:
        names = ", ".join(s.name for s in available) or "(none)"
        kinds = ", ".join(dict.fromkeys(s.kind for s in available)) or "(none)"
        sample = ", ".join(list(n for n in modules if n)[:12])
        raise UnknownNameError(
            f"unknown site or module {path!r}. Named sites: {names}. Kinds: {kinds}. "
            f"Or give a module path, e.g. {sample}, ... (see statmech_nn.sites for the syntax)"
        )
    hook, layout, heads, kind, layer = "output", "auto", None, "module", None
    for opt in options:
        key, _, value = opt.partition("=")
        try:
            if opt in HOOKS:
                hook = opt
            elif opt in ("tokens", "channels_first"):
                layout = opt
            elif key == "heads" and value:
                heads = int(value)
                if heads < 1:
                    raise ValueError
            elif key == "kind" and value:
                kind = value
            elif key == "layer" and value:
                layer = int(value)
            else:
                raise KeyError
        except KeyError:
            raise UnknownNameError(
                f"unknown site option {opt!r} in {item!r}: use heads=H, kind=K, layer=L, "
                "input, output, tokens or channels_first"
            ) from None
        except ValueError:
            raise UnknownNameError(f"bad value in site option {opt!r} of {item!r}") from None
    if layer is None:
        layer = kind_counts.get(kind, 0)
    kind_counts[kind] = layer + 1
    return Site(path, kind, layer, path, hook, layout, heads)


def resolve(model: nn.Module, spec: str | Sequence[str] | Sequence[Site] = "all") -> list[Site]:
    """The sites named by ``spec`` (see the module docstring), without duplicates, in order.

    Raises :class:`UnknownNameError` listing the available sites and kinds for an unknown item.
    """
    from statmech_nn.foreign.heads_check import check_heads  # heads only where heads are

    sites: list[Site]
    if not isinstance(spec, str) and spec and all(isinstance(s, Site) for s in spec):
        sites = [s for s in spec if isinstance(s, Site)]
    else:
        available = available_sites(model)
        by_name = {s.name: s for s in available}
        modules = dict(model.named_modules())
        kind_counts: dict[str, int] = {}
        sites = []
        for item in parse_spec(cast(str | Sequence[str], spec)):
            if item == "all":
                if not available:
                    raise UnknownNameError(
                        f"{type(model).__name__} has no named sites: give module paths "
                        "(e.g. 'layer3', or 'blocks.1.attn.proj:input:heads=4' for the per-head "
                        "context at the input of an attention's output projection)"
                    )
                sites.extend(available)
            elif item in by_name:
                sites.append(by_name[item])
            elif any(s.kind == item for s in available):
                sites.extend(s for s in available if s.kind == item)
            elif any(s.name.startswith(item + ".") for s in available):
                sites.extend(s for s in available if s.name.startswith(item + "."))
            else:
                site = _module_site(item, modules, kind_counts, available)
                sites.append(check_heads(model, site, available))
    unique = list(dict.fromkeys(sites))
    names = [s.name for s in unique]
    if len(set(names)) != len(names):
        raise UnknownNameError(f"site names repeat in {names}: give each module once")
    keys = [(s.kind, s.layer) for s in unique]
    if len(set(keys)) != len(keys):
        raise UnknownNameError(
            f"two sites share kind and layer in {names}: set kind=K or layer=L on module sites"
        )
    return unique


def to_tokens(t: torch.Tensor, layout: str) -> torch.Tensor:
    """``[B, position, node]`` view of a captured tensor (see the module docstring)."""
    if t.ndim == 2:
        return t.unsqueeze(1)
    if layout == "channels_first" or (layout == "auto" and t.ndim >= 4):
        return t.flatten(2).transpose(1, 2)
    if t.ndim == 3:
        return t
    return t.flatten(1, -2)


class _StopForward(BaseException):
    """Raised by the last needed hook to skip the rest of the forward pass.

    A ``BaseException`` so that a model's own ``except Exception`` cannot swallow it.
    """


class ActivationCapture:
    """Context manager: hooks on ``sites``; calling it runs ``model(x)`` and returns activations.

    ``x`` is an image tensor or a text batch's dict (``statmech_nn.batches.call_model``).

    ``capture(x)`` returns ``{site.name: float32 tensor [B, T, N]}`` (detached, contiguous, and
    copied when it shares memory with a tensor the rest of the forward could modify in place,
    as some models do). With ``stop_early`` the forward pass is cut right after the last site's
    hook fired, so the rest of the network is not computed (and that site needs no copy).
    A module called several times per forward is read at its first call.
    """

    def __init__(self, model: nn.Module, sites: Sequence[Site], stop_early: bool = True):
        self.model = model
        self.sites = list(sites)
        self.stop_early = stop_early
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._store: dict[str, torch.Tensor] = {}
        modules = dict(model.named_modules())
        for site in self.sites:
            if site.module not in modules:
                raise UnknownNameError(f"site {site.name!r}: no module {site.module!r} in model")
            if site.hook not in HOOKS:
                raise UnknownNameError(f"site {site.name!r}: hook must be one of {HOOKS}")
            if site.layout not in LAYOUTS:
                raise UnknownNameError(f"site {site.name!r}: layout must be one of {LAYOUTS}")
        self._modules = modules

    def _record(self, site: Site, value: object) -> None:
        if site.name in self._store:
            return
        if not isinstance(value, torch.Tensor):
            raise SiteNotReachedError(
                f"site {site.name!r}: the {site.hook} of {site.module!r} is a "
                f"{type(value).__name__}, not a tensor; pick another module or hook"
            )
        last = self.stop_early and len(self._store) + 1 == len(self.sites)
        out = to_tokens(value.detach(), site.layout).float().contiguous()
        if out.data_ptr() == value.data_ptr() and not last:
            out = out.clone()
        self._store[site.name] = out
        if last:
            raise _StopForward

    def __enter__(self) -> ActivationCapture:
        for site in self.sites:
            module = self._modules[site.module]
            if site.hook == "output":
                handle = module.register_forward_hook(
                    lambda _m, _i, out, site=site: self._record(site, out)
                )
            else:
                handle = module.register_forward_pre_hook(
                    lambda _m, inputs, site=site: self._record(site, inputs[0] if inputs else None)
                )
            self._handles.append(handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __call__(self, x: Inputs) -> dict[str, torch.Tensor]:
        if not self._handles:
            raise RuntimeError("ActivationCapture must be used inside a 'with' block")
        self._store = {}
        try:
            call_model(self.model, x)
        except _StopForward:
            pass
        missing = [s.name for s in self.sites if s.name not in self._store]
        if missing:
            raise SiteNotReachedError(
                f"sites {missing} were not reached by the forward pass: their modules are not "
                "called by the model's forward"
            )
        store, self._store = self._store, {}
        return store
