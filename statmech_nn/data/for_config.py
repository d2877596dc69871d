"""The data of a training config: the same splits a run trained, validated and tested on."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from statmech_nn.data.catalog import load
from statmech_nn.data.splits import Splits


def data_for_config(config: Mapping[str, Any], augment: str = "none") -> Splits:
    """The data ``Splits`` of a training config (e.g. a run's), by default without augmentation.

    Same dataset, root, image size, validation fraction and seed as in training, so the
    validation/test samples are exactly the run's.
    """
    return load(
        config["dataset"],
        root=config.get("data_root"),
        download=bool(config.get("download", False)),
        img_size=config.get("img_size"),
        val_fraction=config.get("val_fraction", 0.1),
        seed=config.get("seed", 0),
        augment=augment,
        **dict(config.get("dataset_options") or {}),
    )
