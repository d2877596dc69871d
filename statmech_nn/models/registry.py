"""A timm-like model registry: ``register`` builders by name, ``create`` models, load weights.

A builder is a function ``builder(**kwargs) -> nn.Module`` named like the model. Its model class
(``model_class``) defines which keyword overrides ``create`` accepts: every constructor argument
except ``name``. Every model built here carries ``model.config``, a JSON-able dict with ``name``
and every constructor argument, so ``from_config(model.config)`` rebuilds it.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from statmech_nn.errors import CheckpointError, ConfigError, UnknownNameError

Builder = Callable[..., nn.Module]

_BUILDERS: dict[str, Builder] = {}
_ACCEPTS: dict[str, tuple[str, ...]] = {}
_DEFAULTS: dict[str, dict[str, Any]] = {}
# What a constructor raises for arguments that cannot make a model (a negative width, a head
# count that does not divide the embedding): reported as ConfigError naming the arguments.
_BUILD_ERRORS = (ValueError, TypeError, RuntimeError, ArithmeticError, AssertionError)
_POSITIONAL_EMBEDDINGS = ("learnable", "sine", "none")
_SHOWN = 5


def register(
    fn: Builder | None = None, *, name: str | None = None, model_class: type | None = None
) -> Builder | Callable[[Builder], Builder]:
    """Register ``fn`` under ``name`` (default ``fn.__name__``); usable as a bare decorator."""

    def wrap(builder: Builder) -> Builder:
        key = name or builder.__name__
        if key in _BUILDERS:
            raise ValueError(f"model {key!r} is already registered")
        target = model_class if model_class is not None else builder
        params = inspect.signature(target).parameters
        _BUILDERS[key] = builder
        _ACCEPTS[key] = tuple(p for p in params if p != "name")
        _DEFAULTS[key] = {
            p: v.default for p, v in params.items() if v.default is not inspect.Parameter.empty
        }
        return builder

    return wrap(fn) if fn is not None else wrap


def names() -> list[str]:
    """All registered model names, sorted."""
    return sorted(_BUILDERS)


def _unknown(kind: str, value: str, choices: list[str]) -> UnknownNameError:
    close = difflib.get_close_matches(value, choices, n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    return UnknownNameError(f"unknown {kind} {value!r}; {hint}known: {', '.join(choices)}")


def create(
    name: str,
    num_classes: int = 10,
    img_size: int | None = None,
    positional_embedding: str = "learnable",
    **overrides: Any,
) -> nn.Module:
    """Build the registered model ``name``.

    ``img_size=None`` keeps the variant's native size. ``positional_embedding`` is one of
    ``learnable``, ``sine``, ``none`` (models without one accept only the default). ``overrides``
    are any other constructor arguments (e.g. ``attention_dropout=0.0``).
    """
    if ":" in name:  # hf:, timm:, torchvision: models are built in statmech_nn.foreign
        from statmech_nn.foreign.models import create_foreign

        return create_foreign(name, num_classes, img_size, positional_embedding, **overrides)
    if name not in _BUILDERS:
        raise _unknown("model", name, names())
    if positional_embedding not in _POSITIONAL_EMBEDDINGS:
        raise _unknown("positional_embedding", positional_embedding, list(_POSITIONAL_EMBEDDINGS))
    accepts = _ACCEPTS[name]
    for key in overrides:
        if key not in accepts:
            raise _unknown(f"argument of {name}", key, list(accepts))
    kwargs: dict[str, Any] = {"num_classes": num_classes, "img_size": img_size, **overrides}
    if "positional_embedding" in accepts:
        kwargs["positional_embedding"] = positional_embedding
    elif positional_embedding != "learnable":
        raise UnknownNameError(
            f"model {name!r} has no positional embedding; do not pass positional_embedding"
        )
    _check_counts(name, overrides)
    try:
        return _BUILDERS[name](**kwargs)
    except _BUILD_ERRORS as exc:
        given = ", ".join(f"{k}={v!r}" for k, v in overrides.items()) or "its defaults"
        raise ConfigError(f"model {name!r} cannot be built with {given}: {exc}") from exc


def _check_counts(name: str, overrides: Mapping[str, Any]) -> None:
    """Overrides of integer arguments with a positive default (widths, depths, head counts)
    must be integers >= 1 (paddings >= 0)."""
    defaults = _DEFAULTS.get(name, {})
    for key, value in overrides.items():
        default = defaults.get(key)
        if not (isinstance(default, int) and not isinstance(default, bool) and default > 0):
            continue
        least = 0 if key.endswith("padding") else 1
        if not (isinstance(value, int) and not isinstance(value, bool) and value >= least):
            kind = "a non-negative" if least == 0 else "a positive"
            raise ConfigError(f"model {name!r}: {key} must be {kind} integer, got {value!r}")


def from_config(config: Mapping[str, Any]) -> nn.Module:
    """Rebuild a model from its ``model.config`` (e.g. as stored next to a checkpoint)."""
    if "name" not in config:
        raise CheckpointError("model config has no 'name'; it was not written by statmech-nn")
    rest = dict(config)
    return create(rest.pop("name"), **rest)


def _listing(what: str, keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOWN])
    more = f", ... ({len(keys) - _SHOWN} more)" if len(keys) > _SHOWN else ""
    return f"{len(keys)} {what}: {shown}{more}"


def load_weights(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> None:
    """Strictly load ``state_dict`` into ``model``.

    Raises ``CheckpointError`` naming the missing keys, unexpected keys and shape mismatches
    (the first few of each, with counts), instead of torch's long multi-line error.
    """
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    mismatched = [
        f"{k} (checkpoint {tuple(v.shape)}, model {tuple(own[k].shape)})"
        for k, v in state_dict.items()
        if k in own and tuple(v.shape) != tuple(own[k].shape)
    ]
    problems = [
        _listing(what, keys)
        for what, keys in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("shape mismatches", mismatched),
        )
        if keys
    ]
    if problems:
        name = getattr(model, "config", {}).get("name", type(model).__name__)
        raise CheckpointError(
            f"checkpoint does not fit model {name!r}: {'; '.join(problems)}. "
            "Build the model with the checkpoint's config (statmech_nn.models.from_config)."
        )
    model.load_state_dict(state_dict, strict=True)
