"""``torchvision:<name>``: torchvision classifiers, random weights unless ``pretrained=True``.

``torchvision:vit-tiny-digits`` is a 2-block ``VisionTransformer`` (d = 32, 4 heads of 8,
patches of 4) for the 32 px digits; any other name goes to ``torchvision.models.get_model``
(``image_size`` is passed to ViTs). Their ``nn.MultiheadAttention`` modules get the ``heads_out``
hook points of :mod:`statmech_nn.foreign.capture` at build time.
"""

from __future__ import annotations

from typing import Any

from statmech_nn.errors import UnknownNameError
from statmech_nn.foreign.capture import install_hook_points
from statmech_nn.foreign.wrapper import ForeignModel, build_record

NAMED: dict[str, dict[str, Any]] = {
    "vit-tiny-digits": dict(patch_size=4, num_layers=2, num_heads=4, hidden_dim=32, mlp_dim=64),
}


def build(
    name: str,
    num_classes: int = 10,
    img_size: int | None = None,
    pretrained: bool = False,
    initial_weights: str = "random",
    **kwargs: Any,
) -> ForeignModel:
    """``torchvision:<name>``; ``config`` records ``pretrained=False`` (weights come later)."""
    import torchvision

    if name in NAMED:
        from torchvision.models.vision_transformer import VisionTransformer

        net = VisionTransformer(
            image_size=img_size or 32, num_classes=num_classes, **{**NAMED[name], **kwargs}
        )
    else:
        if name not in torchvision.models.list_models():
            raise UnknownNameError(
                f"torchvision:{name}: unknown torchvision model; named here: {', '.join(NAMED)}"
            )
        size = {"image_size": img_size} if img_size and name.startswith("vit_") else {}
        weights = "DEFAULT" if pretrained else None
        net = torchvision.models.get_model(
            name, weights=weights, num_classes=num_classes, **size, **kwargs
        )
    install_hook_points(net)
    record = build_record(
        "torchvision",
        name,
        num_classes,
        img_size,
        name in NAMED,
        pretrained,
        initial_weights,
        kwargs,
    )
    return ForeignModel(net, record)
