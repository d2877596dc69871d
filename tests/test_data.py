"""Datasets: contract, real digits content, synthetic hierarchy, splits, augmentation, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from _tiny import write_fake_cifar
from torch.utils.data import DataLoader

from statmech_nn import data
from statmech_nn.cli import main
from statmech_nn.data.splits import stratified_split
from statmech_nn.data.synthetic import SyntheticConfig, SyntheticSource
from statmech_nn.data.transforms import Evaluate, MixupCutmix, build_transforms
from statmech_nn.errors import DatasetNotFoundError, StatmechError, UnknownNameError

SMALL_SYNTH = dict(num_super=4, num_sub=3, n_train_per_class=10, n_test_per_class=4)


def denormalise(image: torch.Tensor, splits: data.Splits) -> torch.Tensor:
    mean = torch.tensor(splits.mean)[:, None, None]
    std = torch.tensor(splits.std)[:, None, None]
    return image * std + mean


def stack(dataset) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = zip(*(dataset[i] for i in range(len(dataset))), strict=True)
    return torch.stack(images), torch.tensor(labels)


def test_names_and_contract_fields():
    images = ["cifar10", "cifar100", "flowers102", "digits", "synthetic"]
    assert data.names() == images + ["textsynth", "bbcnews", "agnews", "fewrel", "hf"]
    fields = set(data.Splits.__dataclass_fields__)
    assert {
        "name", "train", "val", "test", "classes", "num_classes", "img_size", "channels", "mean",
        "std", "augment", "batch_transform", "label_smoothing", "meta",
    } <= fields  # fmt: skip


def test_unknown_names_raise_with_close_matches():
    with pytest.raises(UnknownNameError, match="cifar10") as err:
        data.load("cifr10")
    assert isinstance(err.value, StatmechError)
    with pytest.raises(UnknownNameError, match="basic"):
        data.load("digits", augment="basik")
    with pytest.raises(UnknownNameError, match="num_super"):
        data.load("synthetic", num_supr=3)
    with pytest.raises(UnknownNameError, match="no options"):
        data.load("digits", noise=0.1)
    with pytest.raises(StatmechError, match="noise"):
        data.load("synthetic", noise=-0.5)
    with pytest.raises(StatmechError, match="val_fraction"):
        data.load("digits", val_fraction=1.0)


@pytest.fixture(scope="module")
def digits_raw():
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.images, bunch.target


def test_digits_are_the_real_sklearn_digits(digits_raw):
    images, targets = digits_raw
    splits = data.load("digits", img_size=8)
    index = splits.meta["sklearn_index"]
    rows = {k: np.asarray(v) for k, v in index.items()}
    everything = np.concatenate([rows["train"], rows["val"], rows["test"]])
    assert sorted(everything.tolist()) == list(range(1797))
    for split in ("train", "val", "test"):
        x, y = stack(getattr(splits, split))
        assert x.shape == (len(rows[split]), 3, 8, 8) and x.dtype == torch.float32
        assert y.tolist() == targets[rows[split]].tolist()
        grey = denormalise(x, splits)
        assert torch.equal(grey[:, 0], grey[:, 1]) and torch.equal(grey[:, 0], grey[:, 2])
        expected = torch.as_tensor(images[rows[split]], dtype=torch.float32) / 16
        assert torch.allclose(grey[:, 0], expected, atol=0.6 / 255 + 1e-5)
    assert splits.classes == [str(d) for d in range(10)]


def test_digits_split_sizes_balance_and_seeds(digits_raw):
    _, targets = digits_raw
    a = data.load("digits", seed=0)
    b = data.load("digits", seed=0)
    c = data.load("digits", seed=1)
    n_test = round(0.2 * 1797)
    assert len(a.test) == n_test
    assert len(a.val) == round(0.1 * (1797 - n_test))
    assert len(a.train) + len(a.val) + len(a.test) == 1797
    assert a.train[0][0].shape == (3, 32, 32) and isinstance(a.train[0][1], int)
    # the test split ignores the run's seed; validation follows it
    assert a.meta["sklearn_index"]["test"] == c.meta["sklearn_index"]["test"]
    assert a.meta["sklearn_index"]["val"] == b.meta["sklearn_index"]["val"]
    assert a.meta["sklearn_index"]["val"] != c.meta["sklearn_index"]["val"]
    assert not set(a.meta["sklearn_index"]["val"]) & set(a.meta["sklearn_index"]["train"])
    # stratified: each class holds out its share, to within one sample
    class_count = np.bincount(targets, minlength=10)
    test_count = np.bincount(a.test.targets, minlength=10)
    assert np.all(np.abs(test_count - 0.2 * class_count) < 1.0 + 1e-9)
    # the fixed normalisation constants really normalise
    x, _ = stack(a.train)
    assert abs(x.mean().item()) < 0.05 and abs(x.std().item() - 1) < 0.05


def test_stratified_split_exact_and_proportional():
    labels = np.repeat(np.arange(7), [3, 10, 25, 1, 40, 12, 9])
    kept, held = stratified_split(labels, 0.3, seed=5)
    assert len(held) == round(0.3 * len(labels)) and len(kept) + len(held) == len(labels)
    assert not set(kept) & set(held)
    counts = np.bincount(labels[held], minlength=7)
    share = 0.3 * np.bincount(labels)
    assert np.all((counts >= np.floor(share)) & (counts <= np.ceil(share)))
    again, _ = stratified_split(labels, 0.3, seed=5)
    other, _ = stratified_split(labels, 0.3, seed=6)
    assert np.array_equal(kept, again) and not np.array_equal(kept, other)
    kept, held = stratified_split(labels, 0.0, seed=0)
    assert len(held) == 0 and len(kept) == len(labels)


def test_synthetic_shapes_determinism_and_batch_independence():
    a = data.load("synthetic", **SMALL_SYNTH)
    b = data.load("synthetic", **{k: str(v) for k, v in SMALL_SYNTH.items()})
    other = data.load("synthetic", data_seed=1, **SMALL_SYNTH)
    assert a.num_classes == 12 and a.classes[:4] == ["s00_c0", "s00_c1", "s00_c2", "s01_c0"]
    assert a.meta["superclass"] == [c // 3 for c in range(12)]
    assert (len(a.train), len(a.val), len(a.test)) == (108, 12, 48)
    x, y = a.train[5]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and isinstance(y, int)
    assert torch.equal(a.test[7][0], b.test[7][0]) and a.test[7][1] == b.test[7][1]
    assert not torch.equal(a.test[7][0], other.test[7][0])
    assert not set(a.train.indices) & set(a.val.indices)
    assert sorted(a.train.indices + a.val.indices) == list(range(120))
    source = SyntheticSource(SyntheticConfig(**SMALL_SYNTH), "train", img_size=24)
    assert torch.equal(source.render([5])[0], source.render([3, 9, 5])[2])
    assert source.render([0, 1]).shape == (2, 3, 24, 24)
    assert source.targets == [i % 12 for i in range(120)]
    assert torch.equal(source[100][0], source.render([100])[0])  # cached blocks = fresh renders
    with pytest.raises(IndexError):
        source[120]


def test_synthetic_superclasses_share_visual_features():
    config = SyntheticConfig(n_train_per_class=30, n_test_per_class=12)
    source = SyntheticSource(config, "test")
    images = source.render(np.arange(len(source))).float().reshape(len(source), -1) / 255
    labels = torch.tensor(source.targets)
    sup = torch.tensor(config.superclass())
    means = torch.stack([images[labels == c].mean(0) for c in range(config.num_classes)])
    dist = torch.cdist(means, means)
    same = (sup[:, None] == sup[None]) & ~torch.eye(len(sup), dtype=torch.bool)
    between = sup[:, None] != sup[None]
    assert dist[same].mean() < 0.7 * dist[between].mean()
    # a nearest-class-mean classifier confuses labels mostly within their superclass
    train = SyntheticSource(config, "train")
    train_x = train.render(np.arange(len(train))).float().reshape(len(train), -1) / 255
    train_y = torch.tensor(train.targets)
    centroids = torch.stack([train_x[train_y == c].mean(0) for c in range(config.num_classes)])
    pred = torch.cdist(images, centroids).argmin(1)
    wrong = pred != labels
    assert (~wrong).float().mean() > 5 / config.num_classes
    within = (sup[pred[wrong]] == sup[labels[wrong]]).float().mean()
    chance = (config.num_sub - 1) / (config.num_classes - 1)
    assert within > 4 * chance


def test_synthetic_normalisation_constants():
    splits = data.load("synthetic", n_train_per_class=20)
    x = torch.stack([splits.train[i][0] for i in range(0, len(splits.train), 3)])
    assert torch.all(x.mean((0, 2, 3)).abs() < 0.1)
    assert torch.all((x.std((0, 2, 3)) - 1).abs() < 0.1)


def test_augment_presets_train_only():
    plain = data.load("digits")
    assert plain.batch_transform is None and plain.label_smoothing == 0.0
    torch.manual_seed(0)
    cct = data.load("synthetic", augment="cct", **SMALL_SYNTH)
    assert cct.label_smoothing == 0.1 and isinstance(cct.batch_transform, MixupCutmix)
    assert torch.equal(cct.val[0][0], cct.val[0][0])
    assert torch.equal(cct.test[3][0], cct.test[3][0])
    draws = [cct.train[0][0] for _ in range(3)]
    assert not torch.equal(draws[0], draws[1]) or not torch.equal(draws[1], draws[2])
    assert all(d.shape == (3, 32, 32) and d.dtype == torch.float32 for d in draws)
    names = lambda t: [type(s).__name__ for s in t.transforms]  # noqa: E731
    digits_basic = data.load("digits", augment="basic")
    assert "RandomCrop" in names(digits_basic.train.transform)
    assert "RandomHorizontalFlip" not in names(digits_basic.train.transform)
    assert "RandomHorizontalFlip" not in names(data.load("digits", augment="cct").train.transform)
    assert "RandomHorizontalFlip" in names(cct.train.transform)
    assert "RandAugment" in names(cct.train.transform)
    assert isinstance(digits_basic.val.transform, Evaluate)
    assert isinstance(plain.train.transform, Evaluate)


def test_fast_evaluation_path_matches_the_v2_pipeline():
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
    _, evaluate = build_transforms("none", 16, mean, std, source_size=16)
    image = torch.randint(0, 256, (3, 16, 16), dtype=torch.uint8)
    fast = evaluate(image)
    assert type(fast) is torch.Tensor and fast.dtype == torch.float32
    assert torch.allclose(fast, evaluate.pipeline(image), atol=1e-6)
    by_hand = (image.double() / 255 - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[
        :, None, None
    ]
    assert torch.allclose(fast.double(), by_hand, atol=1e-5)
    _, varying = build_transforms("none", 16, mean, std, source_size=None)
    assert torch.allclose(varying(image), varying.pipeline(image), atol=1e-6)
    assert varying(torch.randint(0, 256, (3, 20, 30), dtype=torch.uint8)).shape == (3, 16, 16)


def test_mixup_targets_match_the_mixed_images():
    torch.manual_seed(1)
    x = torch.rand(6, 3, 8, 8)
    y = torch.arange(6)
    mix = MixupCutmix(num_classes=10, switch_prob=0.0)
    out, soft = mix(x, y)
    assert soft.shape == (6, 10) and torch.allclose(soft.sum(1), torch.ones(6))
    eps = 0.1
    lam = ((soft[0, 0] - eps / 10) / (1 - eps)).item()
    assert 0 <= lam <= 1
    assert torch.allclose(out, lam * x + (1 - lam) * x.roll(1, 0), atol=1e-6)
    expected = (1 - eps) * (
        lam * torch.eye(10)[y] + (1 - lam) * torch.eye(10)[y.roll(1, 0)]
    ) + eps / 10
    assert torch.allclose(soft, expected, atol=1e-6)


def test_cutmix_targets_match_the_pasted_area():
    torch.manual_seed(2)
    x = torch.rand(5, 3, 16, 16)
    y = torch.tensor([3, 1, 4, 0, 2])
    out, soft = MixupCutmix(num_classes=5, switch_prob=1.0)(x, y)
    assert torch.allclose(soft.sum(1), torch.ones(5))
    from_self = (out == x).all(1).float().mean((1, 2))
    from_other = (out == x.roll(1, 0)).all(1).float().mean((1, 2))
    assert torch.allclose(from_self + from_other, torch.ones(5))
    lam = (soft[torch.arange(5), y] - 0.1 / 5) / 0.9
    assert torch.allclose(lam, from_self, atol=1e-6)


def test_dataloader_batches_through_batch_transform():
    splits = data.load("synthetic", augment="cct", **SMALL_SYNTH)
    images, labels = next(iter(DataLoader(splits.train, batch_size=16, shuffle=True)))
    assert images.shape == (16, 3, 32, 32) and images.dtype == torch.float32
    assert labels.dtype == torch.int64
    mixed, soft = splits.batch_transform(images, labels)
    assert mixed.shape == images.shape and soft.shape == (16, splits.num_classes)
    assert torch.allclose(soft.sum(1), torch.ones(16)) and soft.min() >= 0.1 / 12 - 1e-7


def test_missing_torchvision_data_names_directory_and_flag(tmp_path, monkeypatch):
    with pytest.raises(DatasetNotFoundError) as err:
        data.load("cifar100", root=tmp_path)
    message = str(err.value)
    assert str(tmp_path / "cifar-100-python") in message
    assert "--download" in message and "--data-root" in message and "STATMECH_DATA" in message
    assert "\n" not in message
    monkeypatch.setenv("STATMECH_DATA", str(tmp_path / "elsewhere"))
    with pytest.raises(DatasetNotFoundError, match="elsewhere.flowers-102"):
        data.load("flowers102")
    assert isinstance(err.value, StatmechError)
    assert not (tmp_path / "cifar-100-python").exists()


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_fake_cifar_loads_end_to_end(tmp_path, monkeypatch, name):
    train_x, train_y, test_x, test_y, classes = write_fake_cifar(tmp_path, name)
    with pytest.raises(DatasetNotFoundError, match="corrupted"):
        data.load(name, root=tmp_path)  # the md5 sums of the fake files do not match
    import torchvision.datasets.cifar as tv_cifar

    monkeypatch.setattr(tv_cifar, "check_integrity", lambda path, md5=None: Path(path).is_file())
    splits = data.load(name, root=tmp_path, val_fraction=0.2, seed=3)
    assert splits.classes == classes and splits.num_classes == len(classes)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (24, 6, 10)
    x, y = stack(splits.test)
    assert y.tolist() == test_y
    pixels = torch.round(denormalise(x, splits) * 255)
    assert torch.equal(pixels, torch.from_numpy(test_x).float())
    val_x, val_y = stack(splits.val)
    for image, label, row in zip(val_x, val_y, splits.val.indices, strict=True):
        assert label == train_y[row]
        expected = torch.from_numpy(train_x[row]).float()
        assert torch.equal(torch.round(denormalise(image, splits) * 255), expected)
    assert splits.info()["root"] == str(tmp_path)
    json.dumps(splits.info())
    if name == "cifar100":  # the 20 coarse labels travel with the data as its hierarchy
        assert len(splits.meta["superclass"]) == 100 and len(splits.meta["superclass_names"]) == 20
    else:
        assert "superclass" not in splits.meta
    resized = data.load(name, root=tmp_path, img_size=40, augment="cct")
    assert resized.train[0][0].shape == (3, 40, 40) and resized.test[0][0].shape == (3, 40, 40)


def test_cifar100_superclasses_are_twenty_of_five():
    from collections import Counter

    from statmech_nn.data.vision import cifar100_superclasses

    table = cifar100_superclasses()
    assert sorted(Counter(table["superclass"]).values()) == [5] * 20
    names = table["superclass_names"]
    # apple, aquarium_fish, baby, bear, beaver: the first fine classes in alphabetical order
    assert [names[s] for s in table["superclass"][:5]] == [
        "fruit_and_vegetables", "fish", "people", "large_carnivores", "aquatic_mammals"
    ]  # fmt: skip


def write_fake_flowers(root: Path) -> dict[str, list[int]]:
    from PIL import Image
    from scipy.io import savemat

    folder = root / "flowers-102"
    (folder / "jpg").mkdir(parents=True)
    rng = np.random.default_rng(0)
    n = 12
    for i in range(1, n + 1):
        pixels = rng.integers(0, 256, (30 + i, 45, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / "jpg" / f"image_{i:05d}.jpg")
    labels = np.arange(n) % 102 + 1
    ids = {"trnid": [1, 2, 3, 4], "valid": [5, 6, 7], "tstid": [8, 9, 10, 11, 12]}
    savemat(folder / "imagelabels.mat", {"labels": labels})
    savemat(folder / "setid.mat", {k: np.array(v) for k, v in ids.items()})
    return {k: [int(labels[i - 1]) - 1 for i in v] for k, v in ids.items()}


def test_fake_flowers_official_splits(tmp_path, monkeypatch):
    expected = write_fake_flowers(tmp_path)
    import torchvision.datasets.flowers102 as tv_flowers

    monkeypatch.setattr(tv_flowers, "check_integrity", lambda path, md5=None: Path(path).is_file())
    splits = data.load("flowers102", root=tmp_path, img_size=32, augment="basic")
    assert splits.info()["val_split"] == "official" and splits.num_classes == 102
    assert splits.train.targets == expected["trnid"]
    assert splits.val.targets == expected["valid"]
    assert splits.test.targets == expected["tstid"]
    for dataset in (splits.train, splits.val, splits.test):
        image, label = dataset[1]
        assert image.shape == (3, 32, 32) and image.dtype == torch.float32
    default = data.load("flowers102", root=tmp_path, augment="cct")
    assert default.img_size == 224 and default.train[0][0].shape == (3, 224, 224)
    assert default.test[0][0].shape == (3, 224, 224)


def test_datasets_command(tmp_path, capsys, monkeypatch):
    assert main(["datasets", "--data-root", str(tmp_path), "--json"]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert list(rows) == data.names()
    assert not rows["cifar10"]["present"] and "--download cifar10" in rows["cifar10"]["how_to_get"]
    assert rows["digits"]["present"] and rows["digits"]["classes"] == 10
    assert rows["synthetic"]["classes"] == 100
    digits = data.load("digits")
    assert rows["digits"]["sizes"] == {
        "train": len(digits.train), "val": len(digits.val), "test": len(digits.test)
    }  # fmt: skip
    assert rows["flowers102"]["sizes"] == {"train": 1020, "val": 1020, "test": 6149}
    write_fake_cifar(tmp_path, "cifar10")
    assert main(["datasets", "--data-root", str(tmp_path)]) == 0
    table = capsys.readouterr().out
    line = next(row for row in table.splitlines() if row.startswith("cifar10 "))
    assert " yes " in line and "45000/5000/10000" in line
    assert main(["datasets", "--download", "cifr10"]) == 2
    assert "cifar10" in capsys.readouterr().err
