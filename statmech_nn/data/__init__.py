"""Datasets: ``load(name, ...) -> Splits`` for cifar10, cifar100, flowers102, digits, synthetic,
and the text sets textsynth, bbcnews, agnews, fewrel, hf (``TextSplits``, see ``data.text``).

``catalog`` (what exists, ``load``), ``splits`` (the ``Splits`` bundle, seeded splitting),
``transforms`` (augmentation presets, mixup / cutmix), ``vision`` (torchvision datasets on disk),
``digits`` (scikit-learn digits) and ``synthetic`` (the procedural hierarchy dataset).
"""

from statmech_nn.data.catalog import DATA_ENV, data_root, load, names, spec
from statmech_nn.data.for_config import data_for_analysis, data_for_config
from statmech_nn.data.splits import Splits, subset
from statmech_nn.data.text import TextSplits

__all__ = [
    "DATA_ENV",
    "Splits",
    "TextSplits",
    "data_for_analysis",
    "data_for_config",
    "data_root",
    "load",
    "names",
    "spec",
    "subset",
]
