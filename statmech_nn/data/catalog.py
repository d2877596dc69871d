"""The dataset catalogue: what each dataset is, where it lives, and ``load`` to build its splits.

Normalisation constants: CIFAR-10, CIFAR-100 and Flowers-102 use the CCT reference values.
digits and synthetic use fixed constants measured once on their training images at the default
settings (digits at 32 px: mean 0.305, std 0.324 per channel; synthetic with the default options);
they are kept fixed rather than recomputed so that a checkpoint's inputs never depend on options.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from statmech_nn.data import digits, synthetic, text_catalog, vision
from statmech_nn.data.splits import Splits, View, split_sizes, stratified_split
from statmech_nn.data.transforms import AUGMENTS, CCT_LABEL_SMOOTHING, MixupCutmix, build_transforms
from statmech_nn.errors import ConfigError, UnknownNameError

DATA_ENV = "STATMECH_DATA"


@dataclass
class Raw:
    """What a dataset builder hands back before splitting and transforms."""

    train: Any
    test: Any
    classes: list[str]
    source_size: int | None
    val: Any = None
    meta: dict[str, Any] = field(default_factory=dict)
    root: str | None = None


@dataclass(frozen=True)
class DatasetSpec:
    """A catalogue entry; ``sizes(options)`` gives (train pool, official val or None, test)."""

    name: str
    summary: str
    img_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    hflip: bool
    how_to_get: str
    sizes: Callable[[dict[str, Any]], tuple[int, int | None, int]]
    build: Callable[[Path, bool, int, dict[str, Any]], Raw]
    classes: Callable[[dict[str, Any]], int]
    options: dict[str, Any] = field(default_factory=dict)
    on_disk: bool = False
    channels: int = 3

    def present(self, root: Path) -> bool:
        """Whether the data can be used without a download."""
        return vision.is_present(self.name, root) if self.on_disk else True


def _cifar(name: str) -> Callable[[Path, bool, int, dict[str, Any]], Raw]:
    def build(root: Path, download: bool, img_size: int, options: dict[str, Any]) -> Raw:
        train, test, classes = vision.build_cifar(name, root, download)
        meta = vision.cifar100_superclasses() if name == "cifar100" else {}
        return Raw(train, test, classes, source_size=32, root=str(root), meta=meta)

    return build


def _flowers(root: Path, download: bool, img_size: int, options: dict[str, Any]) -> Raw:
    splits, classes = vision.build_flowers(root, download)
    return Raw(splits["train"], splits["test"], classes, None, val=splits["val"], root=str(root))


def _digits(root: Path, download: bool, img_size: int, options: dict[str, Any]) -> Raw:
    pool, test, index = digits.build_digits(img_size)
    classes = [str(d) for d in range(10)]
    return Raw(pool, test, classes, source_size=img_size, meta={"sklearn_index": index})


def _synthetic(root: Path, download: bool, img_size: int, options: dict[str, Any]) -> Raw:
    config = synthetic.SyntheticConfig(**options)
    train = synthetic.SyntheticSource(config, "train", img_size)
    test = synthetic.SyntheticSource(config, "test", img_size)
    meta = {
        "superclass": config.superclass(),
        "superclass_names": [f"s{s:02d}" for s in range(config.num_super)],
        "shapes": [synthetic.SHAPES[s % len(synthetic.SHAPES)] for s in range(config.num_super)],
    }
    return Raw(train, test, config.class_names(), source_size=img_size, meta=meta)


def _synthetic_sizes(options: dict[str, Any]) -> tuple[int, None, int]:
    n = options["num_super"] * options["num_sub"]
    return n * options["n_train_per_class"], None, n * options["n_test_per_class"]


_DIGITS_POOL, _DIGITS_TEST = split_sizes(digits.NUM_IMAGES, digits.TEST_FRACTION)
_DOWNLOAD_HINT = "statmech-nn datasets --download {name} --data-root DIR"

SPECS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec(
            name="cifar10",
            summary="CIFAR-10, 32x32 colour photos, 10 classes",
            img_size=32,
            mean=(0.4914, 0.4822, 0.4465),
            std=(0.2470, 0.2435, 0.2616),
            hflip=True,
            how_to_get=_DOWNLOAD_HINT.format(name="cifar10") + " (torchvision, 163 MB)",
            sizes=lambda o: (50000, None, 10000),
            build=_cifar("cifar10"),
            classes=lambda o: 10,
            on_disk=True,
        ),
        DatasetSpec(
            name="cifar100",
            summary="CIFAR-100, 32x32 colour photos, 100 classes",
            img_size=32,
            mean=(0.5071, 0.4867, 0.4408),
            std=(0.2675, 0.2565, 0.2761),
            hflip=True,
            how_to_get=_DOWNLOAD_HINT.format(name="cifar100") + " (torchvision, 161 MB)",
            sizes=lambda o: (50000, None, 10000),
            build=_cifar("cifar100"),
            classes=lambda o: 100,
            on_disk=True,
        ),
        DatasetSpec(
            name="flowers102",
            summary="Oxford Flowers-102, official splits (train/val/test), 102 classes",
            img_size=224,
            mean=(0.4353, 0.3773, 0.2872),
            std=(0.2966, 0.2455, 0.2698),
            hflip=True,
            how_to_get=_DOWNLOAD_HINT.format(name="flowers102") + " (torchvision, 330 MB)",
            sizes=lambda o: (1020, 1020, 6149),
            build=_flowers,
            classes=lambda o: 102,
            on_disk=True,
        ),
        DatasetSpec(
            name="digits",
            summary="scikit-learn handwritten digits (8x8, resized), 10 classes",
            img_size=32,
            mean=(0.305, 0.305, 0.305),
            std=(0.324, 0.324, 0.324),
            hflip=False,
            how_to_get="bundled with scikit-learn (offline)",
            sizes=lambda o: (_DIGITS_POOL, None, _DIGITS_TEST),
            build=_digits,
            classes=lambda o: 10,
        ),
        DatasetSpec(
            name="synthetic",
            summary="procedural shapes, superclasses x subclasses (cluster ground truth)",
            img_size=32,
            mean=(0.377, 0.361, 0.368),
            std=(0.155, 0.147, 0.152),
            hflip=True,
            how_to_get="generated on the fly (offline)",
            sizes=_synthetic_sizes,
            build=_synthetic,
            classes=lambda o: o["num_super"] * o["num_sub"],
            options={f.name: f.default for f in dataclasses.fields(synthetic.SyntheticConfig)},
        ),
    )
}


def names() -> list[str]:
    """The names ``load`` accepts (image sets, then text sets)."""
    return list(SPECS) + list(text_catalog.SPECS)


def spec(name: str) -> DatasetSpec | text_catalog.TextSpec:
    """The catalogue entry of ``name``; unknown names raise ``UnknownNameError``."""
    if name in text_catalog.SPECS:
        return text_catalog.SPECS[name]
    if name not in SPECS:
        raise UnknownNameError(_unknown("dataset", name, names()))
    return SPECS[name]


def _unknown(what: str, name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(str(name), known, n=3)
    hint = f"; did you mean {' or '.join(close)}?" if close else ""
    return f"unknown {what} {name!r}{hint} (known: {', '.join(known)})"


def data_root(root: str | os.PathLike | None = None) -> Path:
    """The data root: ``root`` if given, else ``$STATMECH_DATA``, else ``./data``."""
    if root is None:
        root = os.environ.get(DATA_ENV) or "data"
    return Path(root).expanduser()


def resolve_options(entry: DatasetSpec, options: dict[str, Any]) -> dict[str, Any]:
    """All options: the defaults overridden by ``options``, cast to the default's type."""
    resolved = dict(entry.options)
    for key, value in options.items():
        if key not in entry.options:
            known = list(entry.options)
            message = _unknown(f"option of dataset {entry.name}", key, known)
            if not known:
                message = f"dataset {entry.name} takes no options (got {key!r})"
            raise UnknownNameError(message)
        kind = type(entry.options[key])
        try:
            resolved[key] = kind(value) if not isinstance(value, bool) else value
        except (TypeError, ValueError) as exc:
            raise ConfigError(
                f"option {key}={value!r} of dataset {entry.name} must be {kind.__name__}"
            ) from exc
    if entry.name == "synthetic":
        for key in ("num_super", "num_sub", "n_train_per_class", "n_test_per_class"):
            if resolved[key] < 1:
                raise ConfigError(f"option {key} of dataset synthetic must be >= 1")
        for key in ("data_seed", "noise", "hue_step"):
            if resolved[key] < 0:
                raise ConfigError(f"option {key} of dataset synthetic must be >= 0")
    return resolved


def load(
    name: str,
    root: str | os.PathLike | None = None,
    download: bool = False,
    img_size: int | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    augment: str = "none",
    **options: Any,
) -> Splits:
    """Train / validation / test splits of dataset ``name``, transformed and normalised.

    ``val`` is a stratified ``val_fraction`` of the training data drawn with ``seed`` (Flowers-102
    keeps its official validation split instead). ``augment`` picks a training preset
    (``none``, ``basic``, ``cct``; see ``statmech_nn.data.transforms``). ``options`` are
    dataset-specific (``synthetic``: ``num_super``, ``num_sub``, ``n_train_per_class``,
    ``n_test_per_class``, ``data_seed``, ``noise``, ``hue_step``).
    """
    if name in text_catalog.SPECS:
        if img_size is not None:
            raise ConfigError(f"dataset {name} is text: it takes no img_size")
        return text_catalog.load_text(
            name, data_root(root), download, val_fraction, seed, augment, **options
        )
    entry = spec(name)
    assert isinstance(entry, DatasetSpec)  # text sets returned above
    if augment not in AUGMENTS:
        raise UnknownNameError(_unknown("augment preset", augment, list(AUGMENTS)))
    if not 0.0 <= float(val_fraction) < 1.0:
        raise ConfigError(f"val_fraction must be in [0, 1), got {val_fraction}")
    size = entry.img_size if img_size is None else int(img_size)
    if size < 8:
        raise ConfigError(f"img_size must be at least 8 pixels, got {img_size}")
    opts = resolve_options(entry, options)
    where = data_root(root)
    raw = entry.build(where, download, size, opts)
    train_tf, eval_tf = build_transforms(
        augment, size, entry.mean, entry.std, hflip=entry.hflip, source_size=raw.source_size
    )
    if raw.val is None:
        train_idx, val_idx = stratified_split(raw.train.targets, float(val_fraction), seed)
        train = View(raw.train, train_idx, train_tf)
        val = View(raw.train, val_idx, eval_tf)
        val_split = "carved"
    else:
        train = View(raw.train, range(len(raw.train)), train_tf)
        val = View(raw.val, range(len(raw.val)), eval_tf)
        val_split = "official"
    meta = dict(raw.meta)
    if "sklearn_index" in meta:
        pool = meta.pop("sklearn_index")
        meta["sklearn_index"] = {
            "train": [pool["pool"][i] for i in train.indices],
            "val": [pool["pool"][i] for i in val.indices],
            "test": pool["test"],
        }
    num_classes = len(raw.classes)
    return Splits(
        name=name,
        train=train,
        val=val,
        test=View(raw.test, range(len(raw.test)), eval_tf),
        classes=list(raw.classes),
        num_classes=num_classes,
        img_size=size,
        channels=entry.channels,
        mean=tuple(entry.mean),
        std=tuple(entry.std),
        augment=augment,
        batch_transform=MixupCutmix(num_classes) if augment == "cct" else None,
        label_smoothing=CCT_LABEL_SMOOTHING if augment == "cct" else 0.0,
        meta=meta,
        seed=seed,
        val_fraction=float(val_fraction),
        val_split=val_split,
        options=opts,
        root=raw.root,
    )
