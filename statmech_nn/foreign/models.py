"""Registry entry points for foreign models and ``load_foreign`` for weights trained elsewhere.

``create_foreign("hf:...", ...)`` / ``"timm:..."`` / ``"torchvision:..."`` is what
``statmech_nn.models.create`` dispatches to for names with a ``prefix:``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from statmech_nn.errors import CheckpointError, UnknownNameError
from statmech_nn.foreign import hf, timm_models, torchvision_models
from statmech_nn.foreign.wrapper import PREFIX, ForeignModel

BUILDERS: dict[str, Callable[..., ForeignModel]] = {
    "hf": hf.build,
    "timm": timm_models.build,
    "torchvision": torchvision_models.build,
}


def is_foreign(name: str) -> bool:
    """Whether ``name`` has a foreign prefix (``hf:``, ``timm:``, ``torchvision:``)."""
    return name.partition(":")[0] in BUILDERS and ":" in name


def create_foreign(
    name: str,
    num_classes: int = 10,
    img_size: int | None = None,
    positional_embedding: str = "learnable",
    **overrides: Any,
) -> ForeignModel:
    """Build ``prefix:rest`` with a classifier of ``num_classes`` (see the family modules)."""
    prefix, _, rest = name.partition(":")
    if prefix not in BUILDERS or not rest:
        raise UnknownNameError(
            f"unknown model {name!r}: foreign models are {', '.join(p + ':NAME' for p in BUILDERS)}"
        )
    if positional_embedding != "learnable":
        raise UnknownNameError(f"model {name!r}: positional_embedding is the library's own")
    return BUILDERS[prefix](rest, num_classes=num_classes, img_size=img_size, **overrides)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` file or a torch file (``weights_only``; no pickle code)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt file, forbidden pickle global
        raise CheckpointError(f"weights file {path} is not readable ({exc})") from None
    if isinstance(state, Mapping) and isinstance(state.get("model"), Mapping):
        state = state["model"]  # a checkpoint of ours
    tensors = isinstance(state, Mapping) and all(torch.is_tensor(v) for v in state.values())
    if not tensors:
        raise CheckpointError(f"weights file {path} holds no state dict of tensors")
    return dict(state)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_foreign(
    name: str,
    weights: str | Path | None = None,
    num_classes: int = 10,
    img_size: int | None = None,
    **overrides: Any,
) -> nn.Module:
    """A registry model ``name`` with ``weights`` loaded strictly, in eval mode.

    ``weights``: a state dict file (``.safetensors`` or torch, loaded without pickle), with or
    without our ``net.`` prefix, or a local Hugging Face directory (for ``hf:`` names, which is
    then the model source). ``model.provenance`` records the weights path and SHA-256.
    """
    from statmech_nn import models

    source = Path(weights).expanduser() if weights is not None else None
    if source is not None and source.is_dir():
        if not name.startswith("hf:"):
            raise CheckpointError(f"{source} is a directory: only hf: models load from one")
        name = f"hf:{source}"
        source = None
    model = models.create(name, num_classes=num_classes, img_size=img_size, **overrides)
    provenance: dict[str, Any] = {"model": name, "weights": ""}
    if source is not None:
        state = read_state_dict(source)
        target = model
        if isinstance(model, ForeignModel) and not any(k.startswith(PREFIX) for k in state):
            target = model.net
        models.load_weights(target, state)
        provenance.update(weights=str(source), sha256=_sha256(source))
    model.provenance = provenance  # type: ignore[assignment]
    return model.eval()
