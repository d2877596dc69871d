"""Masked-language-model (MLM) samples: BERT's masking, a function of (seed, split, epoch, index).

BERT's rule (Devlin et al. 2019, the reference ``create_pretraining_data``): of the positions of a
sequence that are neither padding nor a special token (``[CLS]``, ``[MASK]``, ``[UNK]``, ...),
``max(1, round(probability * n))`` are chosen uniformly without replacement (``probability`` 0.15
by default); each chosen position becomes ``[MASK]`` with probability 0.8, a random token with 0.1
(uniform over the non-special vocabulary) and stays unchanged with 0.1. A sequence without any
such position is left unmasked. The target of a chosen position is its original token; every other
position has the target :data:`IGNORE_INDEX` and is not scored.

Every draw comes from a generator seeded by ``(seed, split, epoch, sample index)`` alone, so the
masks of an epoch do not depend on the data order, the worker count, the number of processes or
on where a run was resumed. An MLM sample is ``(inputs, targets)``: the text batch format of
:mod:`statmech_nn.data.text` with the masked ``input_ids``, and int64 targets ``[T]``; batches of
them have targets ``[B, T]``, which is how the training step tells token targets from labels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from statmech_nn.data.splits import dataset_size
from statmech_nn.errors import ConfigError

__all__ = [
    "IGNORE_INDEX",
    "MLM_OBJECTIVE",
    "MLM_PROBABILITY",
    "MLM_SPLITS",
    "Masking",
    "MaskedTokens",
    "mask_tokens",
    "masking_for",
    "masking_rng",
    "scored",
]

MLM_OBJECTIVE = "mlm"
"""The training ``objective`` of masked-language-model pre-training (``TrainConfig.objective``)."""

IGNORE_INDEX = -100
"""The target of a position that is not scored (torch's and Hugging Face's convention)."""

MLM_PROBABILITY = 0.15
"""BERT's fraction of maskable positions chosen per sequence."""

MASK_SHARE, RANDOM_SHARE = 0.8, 0.1
"""Of the chosen positions: 80 % become ``[MASK]``, 10 % a random token (the rest unchanged)."""

MLM_SPLITS = {"train": 0, "val": 1, "test": 2}
"""The split ids in the masking seed."""

_STREAM = 0x4D4C4D  # "MLM": keeps these generators apart from any other seeded by the same seed


@dataclass(frozen=True)
class Masking:
    """What masking needs of a tokenisation: the ``[MASK]`` id, the special ids, the vocabulary."""

    mask_id: int
    special_ids: tuple[int, ...]
    vocab_size: int
    probability: float = MLM_PROBABILITY

    def __post_init__(self) -> None:
        if not 0.0 < float(self.probability) < 1.0:
            raise ConfigError(f"mlm_probability must be in (0, 1), got {self.probability!r}")
        if not self.random_ids().size:
            raise ConfigError("the vocabulary has no non-special token to mask with")

    def random_ids(self) -> np.ndarray:
        """The ids a position may be replaced with at random: the non-special vocabulary."""
        ids = np.arange(self.vocab_size)
        return ids[~np.isin(ids, np.asarray(self.special_ids, dtype=np.int64))]


def masking_for(splits: Any, probability: float = MLM_PROBABILITY) -> Masking:
    """The :class:`Masking` of a text dataset's splits; :class:`ConfigError` for other data."""
    if getattr(splits, "modality", "image") != "text":
        raise ConfigError(
            f"masked-language-model pre-training needs a text dataset, not {splits.name!r}; pass "
            "--dataset textsynth (or another text set of `statmech-nn datasets`)"
        )
    if splits.mask_id is None:
        raise ConfigError(
            f"the tokenizer of {splits.name!r} has no [MASK] token: pick one that defines "
            "mask_token, or the word vocabulary (no tokenizer option)"
        )
    specials = tuple(sorted({int(i) for i in splits.special_ids} | {int(splits.mask_id)}))
    return Masking(int(splits.mask_id), specials, int(splits.vocab_size), float(probability))


def masking_rng(seed: int, split: str, epoch: int, index: int) -> np.random.Generator:
    """The generator of sample ``index`` of ``split`` in ``epoch``: a function of these alone."""
    return np.random.default_rng([_STREAM, int(seed), MLM_SPLITS[split], int(epoch), int(index)])


def mask_tokens(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    masking: Masking,
    rng: np.random.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(masked input_ids [T], targets [T])`` of one sequence by BERT's rule (module docstring)."""
    ids = input_ids.numpy().astype(np.int64, copy=True)
    real = attention_mask.numpy().astype(bool)
    eligible = np.flatnonzero(real & ~np.isin(ids, np.asarray(masking.special_ids)))
    targets = np.full(ids.shape, IGNORE_INDEX, dtype=np.int64)
    if eligible.size:
        count = max(1, int(round(masking.probability * eligible.size)))
        chosen = np.sort(rng.choice(eligible, size=count, replace=False))
        targets[chosen] = ids[chosen]
        action = rng.random(count)
        candidates = masking.random_ids()
        replacement = candidates[rng.integers(0, candidates.size, size=count)]
        ids[chosen[action < MASK_SHARE]] = masking.mask_id
        swap = (action >= MASK_SHARE) & (action < MASK_SHARE + RANDOM_SHARE)
        ids[chosen[swap]] = replacement[swap]
    return torch.from_numpy(ids), torch.from_numpy(targets)


class MaskedTokens(Dataset):
    """A text split seen as MLM samples ``(masked inputs, targets [T])``, masked per epoch.

    ``set_epoch(e)`` picks the masks of epoch ``e`` (training calls it before each epoch; the
    evaluated splits stay at epoch 0, so their masks are the same in every epoch).
    """

    def __init__(self, dataset: Dataset, masking: Masking, seed: int, split: str, epoch: int = 0):
        if split not in MLM_SPLITS:
            raise ValueError(f"split must be one of {list(MLM_SPLITS)}, got {split!r}")
        self.dataset = dataset
        self.masking = masking
        self.seed = int(seed)
        self.split = split
        self.epoch = int(epoch)

    def set_epoch(self, epoch: int) -> None:
        """Use the masks of ``epoch`` from now on."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return dataset_size(self.dataset)

    def __getitem__(self, index: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        inputs, _ = self.dataset[index]
        rng = masking_rng(self.seed, self.split, self.epoch, index)
        ids, targets = mask_tokens(inputs["input_ids"], inputs["attention_mask"], self.masking, rng)
        return {"input_ids": ids, "attention_mask": inputs["attention_mask"]}, targets


def scored(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logits [S, C], labels [S])`` of the scored predictions of a batch.

    Sequence labels ``[B]`` with logits ``[B, C]`` are returned as they are; token targets
    ``[B, T]`` with logits ``[B, T, C]`` keep the positions whose target is not
    :data:`IGNORE_INDEX` (the masked positions of an MLM batch).
    """
    if labels.ndim == 1:
        return logits, labels
    keep = labels != IGNORE_INDEX
    return logits[keep], labels[keep]
