"""VGG-style CIFAR CNNs (conv-BN-ReLU stacks with max-pooling, one linear head).

The CNN side of the unified claim ([Mechanism], [Universal], [AFCC]). 3x3 convs with padding 1,
BatchNorm, ReLU; 2x2 max-pool after each stage; a global average pool (a no-op at 32x32, where
five pools leave 1x1) so other image sizes work; one ``Linear(512, num_classes)``.
A node of site ``conv{k}`` is a filter of conv layer ``k`` read after its ReLU.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from statmech_nn.models.registry import register
from statmech_nn.sites import Site

POOL = "M"
LAYOUTS: dict[str, list[int | str]] = {
    "vgg11_bn_cifar": [64, POOL, 128, POOL, 256, 256, POOL, 512, 512, POOL, 512, 512, POOL],
    "vgg16_bn_cifar": [
        *(64, 64, POOL, 128, 128, POOL, 256, 256, 256, POOL),
        *(512, 512, 512, POOL, 512, 512, 512, POOL),
    ],
}


class VGG(nn.Module):
    """A VGG; ``widths`` lists conv output channels with ``"M"`` for a 2x2 max-pool."""

    def __init__(
        self,
        name: str = "vgg",
        num_classes: int = 10,
        img_size: int = 32,
        in_channels: int = 3,
        widths: list[int | str] | None = None,
    ) -> None:
        super().__init__()
        widths = list(LAYOUTS["vgg16_bn_cifar"] if widths is None else widths)
        self.config: dict[str, Any] = {
            "name": name,
            "num_classes": num_classes,
            "img_size": img_size,
            "in_channels": in_channels,
            "widths": widths,
        }
        layers: list[nn.Module] = []
        self._relus: list[int] = []
        channels = in_channels
        for width in widths:
            if width == POOL:
                layers.append(nn.MaxPool2d(2, 2))
                continue
            layers += [
                nn.Conv2d(channels, int(width), 3, padding=1, bias=False),
                nn.BatchNorm2d(int(width)),
                nn.ReLU(inplace=False),
            ]
            self._relus.append(len(layers) - 1)
            channels = int(width)
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        self.apply(_init_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))

    def sites(self) -> list[Site]:
        """One ``conv{k}`` site per conv layer: the ReLU after it, channels first."""
        return [
            Site(f"conv{k}", "conv", k, f"features.{index}", layout="channels_first")
            for k, index in enumerate(self._relus)
        ]


def _init_weights(module: nn.Module) -> None:
    """Kaiming-normal (fan-out) convs, unit BatchNorms, small-normal head."""
    if isinstance(module, nn.Conv2d):
        nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=0.01)
        nn.init.zeros_(module.bias)


def _variant(name: str) -> None:
    def build(**kwargs: Any) -> VGG:
        if kwargs.get("img_size") is None:
            kwargs["img_size"] = 32
        kwargs.setdefault("widths", LAYOUTS[name])
        return VGG(name=name, **kwargs)

    build.__name__ = name
    convs = sum(w != POOL for w in LAYOUTS[name])
    build.__doc__ = f"VGG with {convs} conv-BN-ReLU layers for 32x32 images."
    register(build, model_class=VGG)


for _name in LAYOUTS:
    _variant(_name)
