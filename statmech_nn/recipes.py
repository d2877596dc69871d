"""Named training recipes: starting values of a :class:`~statmech_nn.train.TrainConfig`.

A recipe fills every training field; command-line flags override single values. The ``cct-*``
recipes follow the reference CCT training (Hassani et al. 2021, timm configs; see
docs/methods.md section 2): AdamW, linear warm-up from ``warmup_lr``, cosine to
``min_lr`` stepped once per epoch, label smoothing 0.1, the ``cct`` augmentation preset
(RandAugment m9, mixup 0.8 / cutmix 1.0, random erasing 0.25) and AMP on CUDA. They differ from
the reference in two documented ways: the warm-up/cosine shape is ours (:func:`train.lr_at`),
and CIFAR-10's reference turns mixup off after epoch 175 and random erasing off, which the
``cct`` preset does not do.

The ``mlm-cpu`` and ``mlm-bert6-gpu`` recipes pre-train a BERT-style encoder as a masked
language model (``objective="mlm"``, docs/methods.md section 10): BERT's AdamW settings (weight
decay 0.01, gradient clip 1.0, linear warm-up, no label smoothing) with the [NLP-SSB] encoder
(BERT-6: 6 blocks, 12 heads of 64, d = 768, 128 tokens) on a GPU, or a 2-block encoder on 2 CPU
cores.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from statmech_nn.errors import UnknownNameError
from statmech_nn.train import TrainConfig

DEFAULT = "cpu-small"


@dataclass(frozen=True)
class Recipe:
    """A name, one line saying what it is for, and the config values it sets."""

    name: str
    description: str
    values: dict[str, Any] = field(default_factory=dict)


_CCT_COMMON: dict[str, Any] = {
    "weight_decay": 0.06,
    "min_lr": 1e-5,
    "warmup_epochs": 10,
    "cooldown_epochs": 0,
    "schedule_per": "epoch",
    "label_smoothing": 0.1,
    "augment": "cct",
    "amp": True,
    "bf16": False,
    "grad_clip": None,
    "positional_embedding": "learnable",
    "seed": 42,
    "workers": 4,
}

_MLM_COMMON: dict[str, Any] = {
    "objective": "mlm",
    "mlm_probability": 0.15,
    "weight_decay": 0.01,
    "cooldown_epochs": 0,
    "schedule_per": "iteration",
    "label_smoothing": 0.0,
    "augment": "none",
    "grad_clip": 1.0,
    "amp": True,
    "bf16": False,
    "positional_embedding": "learnable",
    "seed": 0,
}

_MLM_TEXTSYNTH: dict[str, Any] = {
    "max_length": 32,
    "n_train_per_class": 200,
    "sub_words": 3,
    "p_sub": 0.4,
    "filler_words": 20,
}
"""textsynth with more, more topical text: each class's own words are predictable from their
context, so a tiny encoder learns the masked tokens (about 15 % masked-token accuracy)."""

RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in (
        Recipe(
            "cpu-small",
            "the default: a small CCT on digits in about a minute on two CPU cores",
            {
                "model": "cct_2_3x2_32",
                "dataset": "digits",
                "epochs": 10,
                "batch_size": 64,
                "lr": 1e-3,
                "weight_decay": 0.05,
                "warmup_epochs": 1,
                "warmup_lr": 1e-5,
                "min_lr": 1e-5,
                "cooldown_epochs": 0,
                "schedule_per": "iteration",
                "label_smoothing": 0.0,
                "augment": "none",
                "amp": True,
                "bf16": False,
                "grad_clip": None,
                "positional_embedding": "learnable",
                "seed": 0,
                "workers": 0,
            },
        ),
        Recipe(
            "cct-cifar100",
            "reference CCT-7/3x1 on CIFAR-100 (80.92% top-1 reported; 300 epochs, a GPU)",
            {
                **_CCT_COMMON,
                "model": "cct_7_3x1_32",
                "dataset": "cifar100",
                "epochs": 300,
                "batch_size": 128,
                "lr": 6e-4,
                "warmup_lr": 1e-6,
            },
        ),
        Recipe(
            "cct-cifar10",
            "reference CCT-7/3x1 on CIFAR-10 (96.53% reported; 300 epochs, a GPU)",
            {
                **_CCT_COMMON,
                "model": "cct_7_3x1_32",
                "dataset": "cifar10",
                "epochs": 300,
                "batch_size": 128,
                "lr": 5.5e-4,
                "warmup_lr": 1e-5,
            },
        ),
        Recipe(
            "cct-flowers102",
            "reference CCT-7/7x2 at 224px on Flowers-102 from scratch (sine positions; a GPU)",
            {
                **_CCT_COMMON,
                "model": "cct_7_7x2_224",
                "dataset": "flowers102",
                "positional_embedding": "sine",
                "epochs": 300,
                "batch_size": 96,
                "lr": 5e-4,
                "warmup_lr": 1e-6,
            },
        ),
        Recipe(
            "mlm-cpu",
            "MLM pre-training of a 2-block BERT (d = 32, 4 heads) on textsynth, about a minute "
            "on 2 CPU cores",
            {
                **_MLM_COMMON,
                "model": "hf:bert-tiny-text",
                "dataset": "textsynth",
                "dataset_options": dict(_MLM_TEXTSYNTH),
                "epochs": 10,
                "batch_size": 32,
                "lr": 3e-3,
                "warmup_epochs": 0.5,
                "warmup_lr": 1e-5,
                "min_lr": 1e-5,
                "workers": 0,
            },
        ),
        Recipe(
            "mlm-bert6-gpu",
            "MLM pre-training of BERT-6 ([NLP-SSB]: 6 blocks, 12 heads of 64, d = 768) on "
            "BBC News at 128 tokens, a GPU",
            {
                **_MLM_COMMON,
                "model": "hf:bert-6",
                "dataset": "bbcnews",
                "dataset_options": {"max_length": 128, "vocab_size": 30522},
                "epochs": 40,
                "batch_size": 128,
                "lr": 1e-4,
                "warmup_epochs": 2,
                "warmup_lr": 1e-6,
                "min_lr": 1e-6,
                "workers": 4,
            },
        ),
    )
}


def names() -> list[str]:
    """All recipe names, sorted."""
    return sorted(RECIPES)


def get(name: str) -> Recipe:
    """The recipe ``name``; :class:`UnknownNameError` listing the known ones otherwise."""
    if name not in RECIPES:
        raise UnknownNameError(f"unknown recipe {name!r}; known: {', '.join(names())}")
    return RECIPES[name]


def config(name: str = DEFAULT, **overrides: Any) -> TrainConfig:
    """The :class:`TrainConfig` of recipe ``name`` with ``overrides`` (``None`` values skipped;
    dict values such as ``dataset_options`` update the recipe's dict)."""
    recipe = get(name)
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(k for k in overrides if k not in fields)
    if unknown:
        raise UnknownNameError(
            f"unknown training setting(s) {', '.join(unknown)}; known: {', '.join(sorted(fields))}"
        )
    values: dict[str, Any] = {
        k: dict(v) if isinstance(v, dict) else v for k, v in recipe.values.items()
    }
    values["recipe"] = recipe.name
    for key, value in overrides.items():
        if value is None:
            continue
        merged = isinstance(value, dict) and isinstance(values.get(key), dict)
        values[key] = {**values[key], **value} if merged else value
    return TrainConfig(**values)
