"""Procedural text topics with a two-level label hierarchy: the ground truth for clusters on text.

The text counterpart of ``synthetic``. Class ``c = s * num_sub + k`` is subclass ``k`` of
superclass ``s``. The vocabulary is made of pronounceable pseudo-words drawn once from
``data_seed``, in three disjoint groups:

- ``super_words`` words per superclass, shared by all its subclasses (what makes the labels of one
  superclass alike);
- ``sub_words`` words per class, its own (what tells the subclasses apart);
- ``filler_words`` common words used by every class (the noise).

A sample has a length drawn uniformly in ``[min_words, max_words]``; each of its words is a
subclass word with probability ``p_sub``, a superclass word with probability ``p_super``, else a
filler word, each uniform within its group. Sample ``i`` of a split has class ``i mod
num_classes`` (every prefix of a split is balanced) and draws from a generator seeded by
``(data_seed, split, i)``, so a sample never depends on the others or on the split's size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from statmech_nn.data.hierarchy import LabelHierarchy
from statmech_nn.errors import ConfigError

SPLIT_IDS = {"train": 0, "test": 1}
_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "ch", "sh", "tr")
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ou")
_CODAS = ("", "", "n", "r", "s", "l", "m")


@dataclass(frozen=True)
class TextSynthConfig(LabelHierarchy):
    """Parameters of the generator (the dataset options of ``load("textsynth", ...)``)."""

    num_super: int = 4
    num_sub: int = 4
    n_train_per_class: int = 60
    n_test_per_class: int = 20
    data_seed: int = 0
    min_words: int = 6
    max_words: int = 20
    super_words: int = 12
    sub_words: int = 6
    filler_words: int = 40
    p_super: float = 0.3
    p_sub: float = 0.2

    def __post_init__(self) -> None:
        for key in ("num_super", "num_sub", "n_train_per_class", "n_test_per_class", "min_words"):
            if getattr(self, key) < 1:
                raise ConfigError(f"option {key} of dataset textsynth must be >= 1")
        for key in ("super_words", "sub_words", "filler_words"):
            if getattr(self, key) < 1:
                raise ConfigError(f"option {key} of dataset textsynth must be >= 1")
        if self.max_words < self.min_words:
            raise ConfigError("option max_words of dataset textsynth must be >= min_words")
        if self.data_seed < 0:
            raise ConfigError("option data_seed of dataset textsynth must be >= 0")
        if not (0 <= self.p_super and 0 <= self.p_sub and self.p_super + self.p_sub <= 1):
            raise ConfigError("options p_super, p_sub of textsynth must be >= 0 with sum <= 1")


@dataclass(frozen=True)
class Lexicon:
    """The word groups: ``super[s]``, ``sub[c]`` (per class) and ``filler``."""

    super: tuple[tuple[str, ...], ...]
    sub: tuple[tuple[str, ...], ...]
    filler: tuple[str, ...]


def pseudo_words(count: int, seed: int) -> list[str]:
    """``count`` distinct pronounceable pseudo-words, the same for the same seed."""
    rng = np.random.default_rng([seed, 7])
    out: list[str] = []
    seen: set[str] = set()
    while len(out) < count:
        syllables = int(rng.integers(2, 4))
        word = "".join(
            _ONSETS[rng.integers(len(_ONSETS))]
            + _VOWELS[rng.integers(len(_VOWELS))]
            + _CODAS[rng.integers(len(_CODAS))]
            for _ in range(syllables)
        )
        if word not in seen:
            seen.add(word)
            out.append(word)
    return out


def lexicon(config: TextSynthConfig) -> Lexicon:
    """The three disjoint word groups of ``config``."""
    n_super = config.num_super * config.super_words
    n_sub = config.num_classes * config.sub_words
    pool = pseudo_words(n_super + n_sub + config.filler_words, config.data_seed)
    sup = tuple(
        tuple(pool[s * config.super_words : (s + 1) * config.super_words])
        for s in range(config.num_super)
    )
    sub = tuple(
        tuple(pool[n_super + c * config.sub_words : n_super + (c + 1) * config.sub_words])
        for c in range(config.num_classes)
    )
    return Lexicon(sup, sub, tuple(pool[n_super + n_sub :]))


def sample_text(config: TextSynthConfig, words: Lexicon, split: str, index: int) -> str:
    """Sample ``index`` of ``split``: a space-separated sentence of class ``index mod L``."""
    label = index % config.num_classes
    rng = np.random.default_rng([config.data_seed, SPLIT_IDS[split], int(index)])
    length = int(rng.integers(config.min_words, config.max_words + 1))
    kind = rng.random(length)
    pick = rng.random(length)
    groups = (words.sub[label], words.super[label // config.num_sub], words.filler)
    out = []
    for u, v in zip(kind, pick, strict=True):
        group = (
            groups[0]
            if u < config.p_sub
            else groups[1]
            if u < config.p_sub + config.p_super
            else groups[2]
        )
        out.append(group[int(v * len(group))])
    return " ".join(out)


def generate(config: TextSynthConfig, split: str) -> tuple[list[str], list[int]]:
    """``(texts, labels)`` of one split, ``n_{split}_per_class`` samples per class."""
    if split not in SPLIT_IDS:
        raise ValueError(f"split must be one of {list(SPLIT_IDS)}, got {split!r}")
    per_class = config.n_train_per_class if split == "train" else config.n_test_per_class
    words = lexicon(config)
    n = per_class * config.num_classes
    texts = [sample_text(config, words, split, i) for i in range(n)]
    return texts, [i % config.num_classes for i in range(n)]
