"""CIFAR-10, CIFAR-100 and Flowers-102 through torchvision, from a data root on disk.

Nothing is downloaded unless asked; a missing or broken copy raises ``DatasetNotFoundError``
naming the directory that was expected and the flag that fetches it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torchvision import datasets

from statmech_nn.data.splits import TensorSource
from statmech_nn.errors import DatasetNotFoundError

CIFAR = {"cifar10": datasets.CIFAR10, "cifar100": datasets.CIFAR100}
FLOWERS_FOLDER = "flowers-102"
FLOWERS_FILES = ("imagelabels.mat", "setid.mat")


def folder(name: str, root: Path) -> Path:
    """The directory that holds ``name`` under the data root."""
    if name in CIFAR:
        return root / CIFAR[name].base_folder
    return root / FLOWERS_FOLDER


def is_present(name: str, root: Path) -> bool:
    """Whether the files torchvision needs are there (sizes and checksums are not checked)."""
    where = folder(name, root)
    if name in CIFAR:
        cls = CIFAR[name]
        files = [f for f, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]
        return all((where / f).is_file() for f in files)
    return (where / "jpg").is_dir() and all((where / f).is_file() for f in FLOWERS_FILES)


def _missing(name: str, root: Path) -> DatasetNotFoundError:
    return DatasetNotFoundError(
        f"dataset {name} not found: expected {folder(name, root)}; pass --download to fetch it "
        f"(e.g. statmech-nn datasets --download {name} --data-root {root}), or point --data-root "
        f"/ STATMECH_DATA at the directory that holds it"
    )


def _open(name: str, root: Path, download: bool, make: Any) -> Any:
    """Call torchvision's constructor, turning its failures into one-line user errors."""
    if not download and not is_present(name, root):
        raise _missing(name, root)
    try:
        return make()
    except RuntimeError as exc:
        raise DatasetNotFoundError(
            f"dataset {name} in {folder(name, root)} is incomplete or corrupted ({exc}); delete "
            f"that directory and pass --download to fetch it again"
        ) from exc
    except OSError as exc:
        raise DatasetNotFoundError(
            f"could not download {name} into {root} ({exc}); check the network, or copy the "
            f"dataset to {folder(name, root)} by hand"
        ) from exc


CIFAR100_SUPERCLASS = (
    (4, 1, 14, 8, 0, 6, 7, 7, 18, 3, 3, 14, 9, 18, 7, 11, 3, 9, 7, 11)
    + (6, 11, 5, 10, 7, 6, 13, 15, 3, 15, 0, 11, 1, 10, 12, 14, 16, 9, 11, 5)
    + (5, 19, 8, 8, 15, 13, 14, 17, 18, 10, 16, 4, 17, 4, 2, 0, 17, 4, 18, 17)
    + (10, 3, 2, 12, 12, 16, 12, 1, 9, 19, 2, 10, 0, 1, 16, 12, 9, 13, 15, 13)
    + (16, 19, 2, 4, 6, 19, 5, 5, 8, 19, 18, 1, 2, 15, 6, 0, 17, 8, 14, 13)
)
"""CIFAR-100's coarse label of each fine class (fine classes in torchvision's alphabetical
order: apple, aquarium_fish, baby, bear, beaver, ...), as the dataset's own files record it."""

CIFAR100_SUPERCLASS_NAMES = (
    "aquatic_mammals", "fish", "flowers", "food_containers", "fruit_and_vegetables",
    "household_electrical_devices", "household_furniture", "insects", "large_carnivores",
    "large_man-made_outdoor_things", "large_natural_outdoor_scenes",
    "large_omnivores_and_herbivores", "medium_mammals", "non-insect_invertebrates", "people",
    "reptiles", "small_mammals", "trees", "vehicles_1", "vehicles_2",
)  # fmt: skip


def cifar100_superclasses() -> dict[str, Any]:
    """``superclass`` of every fine class and ``superclass_names``: CIFAR-100's 20 coarse labels.

    torchvision keeps only the fine labels; the superclasses are the hierarchy that node
    clusters are compared against (docs/methods.md, section 5). A table, so no dataset file is
    ever unpickled by this package.
    """
    return {
        "superclass": list(CIFAR100_SUPERCLASS),
        "superclass_names": list(CIFAR100_SUPERCLASS_NAMES),
    }


def build_cifar(name: str, root: Path, download: bool) -> tuple[TensorSource, TensorSource, list]:
    """``(train, test, classes)`` of CIFAR-10 / CIFAR-100 as in-memory uint8 images."""
    cls = CIFAR[name]

    def source(train: bool) -> tuple[TensorSource, list[str]]:
        ds = _open(
            name, root, download and train, lambda: cls(root, train=train, download=download)
        )
        images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
        return TensorSource(images, ds.targets), list(ds.classes)

    train, classes = source(True)
    test, _ = source(False)
    return train, test, classes


class FlowersSource(torch.utils.data.Dataset):
    """One official Flowers-102 split: ``(PIL image, label)``, decoded on access."""

    def __init__(self, dataset: datasets.Flowers102) -> None:
        self.dataset = dataset
        self.targets = [int(t) for t in dataset._labels]

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        return self.dataset[index]


def build_flowers(root: Path, download: bool) -> tuple[dict[str, FlowersSource], list[str]]:
    """The official ``train`` / ``val`` / ``test`` splits of Flowers-102 and its class names."""
    splits = {}
    for split in ("train", "val", "test"):
        fetch = download and split == "train"

        def make(split: str = split, fetch: bool = fetch) -> datasets.Flowers102:
            return datasets.Flowers102(root, split=split, download=fetch)

        splits[split] = FlowersSource(_open("flowers102", root, fetch, make))
    return splits, list(splits["train"].dataset.classes)
