"""Models by name: CCT variants and VGG-style CIFAR CNNs, each with ``config`` and ``sites()``.

``create(name, num_classes=10, img_size=None, positional_embedding="learnable", **overrides)``
builds a registered model; ``from_config(model.config)`` rebuilds it; ``load_weights`` loads a
state dict strictly with a readable error.
"""

from __future__ import annotations

from statmech_nn.models import cct, vgg  # noqa: F401  (registers the variants)
from statmech_nn.models.registry import create, from_config, load_weights, names, register

__all__ = ["create", "from_config", "load_weights", "names", "register"]
