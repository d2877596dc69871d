"""The data of a training config: the same splits a run trained, validated and tested on."""

from __future__ import annotations

import os
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


USER_FIELDS = ("data_root", "download")
"""Config fields an analysis takes from its user, never from a stored config."""


def data_for_analysis(
    config: Mapping[str, Any],
    augment: str = "none",
    data_root: str | os.PathLike | None = None,
) -> Splits:
    """The data ``Splits`` of a stored training config, for an analysis of its checkpoint.

    As :func:`data_for_config`, but where the data are, and whether they may be downloaded, are
    the analysing user's choice: ``data_root`` if given, else ``$STATMECH_DATA``, else
    ``./data``, and never a download. A checkpoint's config cannot make an analysis write or
    fetch anything.
    """
    own = {key: value for key, value in config.items() if key not in USER_FIELDS}
    return data_for_config({**own, "data_root": data_root, "download": False}, augment)
