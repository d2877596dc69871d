"""Text samples for ``load``: tokenisation, the text batch format, and the ``TextSplits`` bundle.

The text batch format (every text dataset, whatever its source or tokenizer):

- a sample is ``(inputs, label)`` with ``inputs`` a dict of two int64 tensors of length ``T``
  (the dataset's ``max_length``): ``input_ids`` (token ids) and ``attention_mask`` (1 at real
  tokens, 0 at padding), the Hugging Face convention, so ``model(**inputs)`` works for a
  ``transformers`` encoder;
- the default ``DataLoader`` collation stacks them into ``{"input_ids": [B, T],
  "attention_mask": [B, T]}`` beside labels ``[B]``; :func:`to_device` moves such a batch and
  :func:`padding_mask` gives the boolean ``[B, T]`` mask of real positions that the readouts'
  masked pooling (``statmech_nn.text_masks``) takes;
- sequences are right-padded; the first position is always a real token (``[CLS]``), so no
  sequence is ever all padding.

Images stay ``(float32 [C, H, W], label)``. Two tokenisers: a ``transformers`` tokenizer from a
local folder (``tokenizer=PATH``, never downloaded), or by default a word-level vocabulary built
from the training split with the special tokens ``[PAD]=0, [UNK]=1, [CLS]=2, [MASK]=3``; words
are lower-cased runs of letters and digits or single punctuation marks, ordered by frequency
(ties alphabetically), optionally capped at ``vocab_size`` entries in all.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from statmech_nn.data.splits import Splits
from statmech_nn.errors import ConfigError, DatasetNotFoundError

PAD, UNK, CLS, MASK = "[PAD]", "[UNK]", "[CLS]", "[MASK]"
SPECIAL_TOKENS = (PAD, UNK, CLS, MASK)
PAD_ID, UNK_ID, CLS_ID, MASK_ID = range(4)
INPUT_KEYS = ("input_ids", "attention_mask")
_WORD = re.compile(r"\w+|[^\w\s]")


def words(text: str) -> list[str]:
    """The word-level tokens of ``text``: lower-cased ``\\w+`` runs and single punctuation marks."""
    return _WORD.findall(text.lower())


@dataclass(frozen=True)
class Vocabulary:
    """A word-level vocabulary: ``tokens[i]`` is the string of id ``i`` (specials first)."""

    tokens: tuple[str, ...]
    index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.tokens[: len(SPECIAL_TOKENS)] != SPECIAL_TOKENS:
            raise ValueError(f"a vocabulary starts with the special tokens {SPECIAL_TOKENS}")
        object.__setattr__(self, "index", {t: i for i, t in enumerate(self.tokens)})

    @classmethod
    def build(cls, texts: Iterable[str], vocab_size: int = 0, min_count: int = 1) -> Vocabulary:
        """The vocabulary of ``texts``: words by falling count, ties alphabetical; 0 = no cap."""
        if vocab_size and vocab_size <= len(SPECIAL_TOKENS):
            raise ConfigError(f"vocab_size must exceed {len(SPECIAL_TOKENS)}, got {vocab_size}")
        counts = Counter(w for text in texts for w in words(text))
        ranked = sorted(
            (w for w, c in counts.items() if c >= min_count and w not in SPECIAL_TOKENS),
            key=lambda w: (-counts[w], w),
        )
        if vocab_size:
            ranked = ranked[: vocab_size - len(SPECIAL_TOKENS)]
        return cls(SPECIAL_TOKENS + tuple(ranked))

    def __len__(self) -> int:
        return len(self.tokens)

    def ids(self, text: str) -> list[int]:
        """Token ids of ``text`` (no ``[CLS]``, no padding); unknown words map to ``[UNK]``."""
        index = self.index
        return [index.get(w, UNK_ID) for w in words(text)]


def encode_words(
    vocab: Vocabulary, texts: Sequence[str], max_length: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)`` int64 ``[N, max_length]``: ``[CLS]`` + words, padded."""
    check_max_length(max_length)
    ids = torch.full((len(texts), max_length), PAD_ID, dtype=torch.int64)
    mask = torch.zeros((len(texts), max_length), dtype=torch.int64)
    for row, text in enumerate(texts):
        seq = [CLS_ID, *vocab.ids(text)][:max_length]
        ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.int64)
        mask[row, : len(seq)] = 1
    return ids, mask


def check_max_length(max_length: int) -> None:
    """Refuse sequence lengths that leave no room for a word after ``[CLS]``."""
    if int(max_length) < 2:
        raise ConfigError(f"max_length must be at least 2 tokens, got {max_length}")


def load_tokenizer(path: str) -> Any:
    """A ``transformers`` tokenizer from a local folder (never downloaded)."""
    where = Path(path).expanduser()
    if not where.is_dir():
        raise DatasetNotFoundError(
            f"tokenizer folder {where} not found: pass tokenizer=PATH of a folder written by "
            "save_pretrained (nothing is downloaded), or leave it empty for the word vocabulary"
        )
    try:
        from transformers import AutoTokenizer
    except ImportError as exc:
        raise ConfigError("tokenizer=PATH needs the transformers package") from exc
    try:
        return AutoTokenizer.from_pretrained(str(where), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise DatasetNotFoundError(f"no usable tokenizer in {where} ({exc})") from exc


def encode_with_tokenizer(
    tokenizer: Any, texts: Sequence[str], max_length: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)`` int64 ``[N, max_length]`` by a ``transformers`` tokenizer."""
    check_max_length(max_length)
    if tokenizer.pad_token_id is None:
        raise ConfigError("the tokenizer has no padding token; pick one that defines pad_token")
    out = tokenizer(
        list(texts),
        padding="max_length",
        truncation=True,
        max_length=int(max_length),
        return_tensors="pt",
        return_attention_mask=True,
    )
    return out["input_ids"].to(torch.int64), out["attention_mask"].to(torch.int64)


class TextSource(Dataset):
    """Encoded sequences held in memory: ``({"input_ids": [T], "attention_mask": [T]}, label)``."""

    def __init__(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        targets: Sequence[int],
        texts: Sequence[str] | None = None,
    ) -> None:
        if input_ids.shape != attention_mask.shape or input_ids.shape[0] != len(targets):
            raise ValueError(
                f"ids {list(input_ids.shape)}, mask {list(attention_mask.shape)} and "
                f"{len(targets)} labels do not match"
            )
        self.input_ids = input_ids
        self.attention_mask = attention_mask
        self.targets = [int(t) for t in targets]
        self.texts = list(texts) if texts is not None else None

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[dict[str, torch.Tensor], int]:
        inputs = {"input_ids": self.input_ids[index], "attention_mask": self.attention_mask[index]}
        return inputs, self.targets[index]


def identity(inputs: Any) -> Any:
    """The transform of text views: samples are already tensors."""
    return inputs


def to_device(inputs: Mapping[str, torch.Tensor], device: torch.device | str) -> dict:
    """A text batch's tensors moved to ``device``."""
    return {key: value.to(device) for key, value in inputs.items()}


def padding_mask(inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Boolean ``[B, T]`` mask of real (non-padding) positions of a text batch."""
    return inputs["attention_mask"].bool()


@dataclass
class TextSplits(Splits):
    """``Splits`` of a text dataset: samples in the text batch format of this module.

    ``img_size`` is ``None`` (so training keeps the model's own), ``channels``, ``mean`` and
    ``std`` are 0 / empty; ``max_length`` is the sequence length ``T``. ``vocab`` is the word
    vocabulary (``None`` with a ``transformers`` tokenizer, whose folder is ``tokenizer``);
    ``token_names`` lists the string of every token id; ``special_ids`` the ids of the special
    tokens (never masked by masked-language-model pre-training).
    """

    max_length: int = 0
    vocab_size: int = 0
    pad_id: int = PAD_ID
    cls_id: int | None = CLS_ID
    mask_id: int | None = MASK_ID
    special_ids: tuple[int, ...] = tuple(range(len(SPECIAL_TOKENS)))
    tokenizer: str | None = None
    vocab: Vocabulary | None = None
    token_names: list[str] = field(default_factory=list)

    modality = "text"

    def info(self) -> dict[str, Any]:
        """What training logs: the image fields plus the tokenisation."""
        out = super().info()
        out.update(
            modality="text",
            max_length=self.max_length,
            vocab_size=self.vocab_size,
            tokenizer=self.tokenizer or "words",
        )
        for key in ("img_size", "channels", "mean", "std"):
            out.pop(key, None)
        return out
