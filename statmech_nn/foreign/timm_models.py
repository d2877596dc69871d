"""``timm:<name>``: timm classifiers, random weights unless ``pretrained=True`` is asked.

``timm:vit-tiny-digits`` is a 2-block ViT (d = 32, 4 heads of 8, patches of 4) for the 32 px
digits that trains on 2 CPU cores in seconds; any other name goes to ``timm.create_model``.
"""

from __future__ import annotations

from typing import Any

from statmech_nn.errors import StatmechError, UnknownNameError
from statmech_nn.foreign.extras import require
from statmech_nn.foreign.wrapper import ForeignModel, build_record

NAMED: dict[str, dict[str, Any]] = {
    "vit-tiny-digits": dict(patch_size=4, embed_dim=32, depth=2, num_heads=4, mlp_ratio=2.0),
}


def build(
    name: str,
    num_classes: int = 10,
    img_size: int | None = None,
    pretrained: bool = False,
    initial_weights: str = "random",
    **kwargs: Any,
) -> ForeignModel:
    """``timm:<name>``; ``config`` records ``pretrained=False`` (a checkpoint brings weights)."""
    timm = require("timm")
    size = {"img_size": img_size} if img_size else {}
    try:
        if name in NAMED:
            from timm.models.vision_transformer import VisionTransformer

            net = VisionTransformer(
                num_classes=num_classes, **{"img_size": 32, **size, **NAMED[name], **kwargs}
            )
        else:
            net = timm.create_model(
                name, pretrained=pretrained, num_classes=num_classes, **size, **kwargs
            )
    except RuntimeError as exc:
        if "Unknown model" in str(exc):
            raise UnknownNameError(
                f"timm:{name}: unknown timm model; named here: {', '.join(NAMED)}"
            ) from None
        raise StatmechError(f"timm:{name}: {str(exc).splitlines()[0]}") from None
    record = build_record(
        "timm", name, num_classes, img_size, name in NAMED, pretrained, initial_weights, kwargs
    )
    return ForeignModel(net, record)
