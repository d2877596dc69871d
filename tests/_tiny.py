"""Tiny models and data configs shared by the tests (imported as ``from _tiny import ...``)."""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from statmech_nn import models
from statmech_nn.models.cct import CCT
from statmech_nn.sites import Site

# A 6-class synthetic dataset small enough to train or analyse in seconds.
SYNTHETIC = {
    "dataset": "synthetic",
    "img_size": 16,
    "seed": 0,
    "val_fraction": 0.1,
    "dataset_options": {
        "num_super": 3,
        "num_sub": 2,
        "n_train_per_class": 16,
        "n_test_per_class": 8,
    },
}


def write_fake_cifar(root: Path, name: str, n_train: int = 30, n_test: int = 10):
    """A tiny CIFAR copy in torchvision's on-disk format (pickled batches); returns the arrays."""
    rng = np.random.default_rng(0)
    num_classes = 10 if name == "cifar10" else 100
    folder = root / ("cifar-10-batches-py" if name == "cifar10" else "cifar-100-python")
    folder.mkdir(parents=True)
    train = rng.integers(0, 256, (n_train, 3072), dtype=np.uint8)
    test = rng.integers(0, 256, (n_test, 3072), dtype=np.uint8)
    train_y = (np.arange(n_train) % num_classes).tolist()
    test_y = (np.arange(n_test) * 7 % num_classes).tolist()
    classes = [f"class{i}" for i in range(num_classes)]

    def dump(file: str, obj: dict) -> None:
        with open(folder / file, "wb") as f:
            pickle.dump(obj, f)

    if name == "cifar10":
        chunks = np.array_split(np.arange(n_train), 5)
        for i, rows in enumerate(chunks, 1):
            dump(f"data_batch_{i}", {"data": train[rows], "labels": [train_y[r] for r in rows]})
        dump("test_batch", {"data": test, "labels": test_y})
        dump("batches.meta", {"label_names": classes})
    else:
        dump("train", {"data": train, "fine_labels": train_y})
        dump("test", {"data": test, "fine_labels": test_y})
        dump("meta", {"fine_label_names": classes})
    return train.reshape(-1, 3, 32, 32), train_y, test.reshape(-1, 3, 32, 32), test_y, classes


# A masked-LM pre-training config of the tiny BERT on textsynth: seconds per epoch on a CPU.
TINY_MLM = dict(
    model="hf:bert-tiny-text",
    dataset="textsynth",
    dataset_options={"max_length": 16, "n_train_per_class": 8, "n_test_per_class": 4},
    objective="mlm",
    batch_size=16,
    lr=3e-3,
    warmup_epochs=0.5,
    weight_decay=0.01,
    grad_clip=1.0,
    device="cpu",
    amp=False,
    experiment="mlm",
)


def tiny_cct(peaked: bool = False, **kw) -> CCT:
    """A seeded random 2-block CCT on 16x16 images (4 labels, d = 8, 2 heads), in eval mode.

    ``peaked`` scales the qkv weights so the attention is sharp and tokens differ at every site.
    """
    torch.manual_seed(0)
    args = dict(
        num_classes=4,
        img_size=16,
        embedding_dim=8,
        num_layers=2,
        num_heads=2,
        mlp_ratio=2,
        attention_dropout=0.0,
        stochastic_depth=0.0,
    )
    model = CCT(**{**args, **kw}).eval()
    if peaked:
        with torch.no_grad():
            for block in model.classifier.blocks:
                block.self_attn.qkv.weight.mul_(30.0)
    return model


class SmallCNN(nn.Module):
    """Two conv layers of different widths (4 and 6 filters); read channels first."""

    def __init__(self, labels: int = 4) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv2d(4, 6, 3, stride=2, padding=1)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(6, labels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act2(self.conv2(self.act1(self.conv1(x)))).mean((2, 3)))

    def sites(self) -> list[Site]:
        return [
            Site("conv0", "conv", 0, "act1", layout="channels_first"),
            Site("conv1", "conv", 1, "act2", layout="channels_first", heads=2),
        ]


def small_cct(seed: int = 0) -> nn.Module:
    """A 4-class CCT-2 on 16x16 images with 32 channels, seeded."""
    torch.manual_seed(seed)
    return models.create("cct_2_3x2_32", num_classes=4, img_size=16, embedding_dim=32)


CHECKOUT = Path(__file__).resolve().parents[1]


def subprocess_env(drop: Callable[[str], bool] = lambda name: False) -> dict[str, str]:
    """The environment of a ``python -m statmech_nn`` child: this checkout first on the path, one
    thread, no bars, without the variables ``drop`` names."""
    env = {k: v for k, v in os.environ.items() if not drop(k)}
    return {**env, "PYTHONPATH": str(CHECKOUT), "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}


def interrupted_and_resumed(config: object, experiment: str) -> tuple[str, str]:
    """Train ``config`` uninterrupted, then again stopped (Ctrl-C) after epoch 1 and resumed;
    returns ``(resumed run id, uninterrupted run id)``. The stopped run is KILLED with the
    checkpoints of epochs 0 and 1 only, and its resume continues in the same run."""
    import mlflow
    import pytest

    from statmech_nn import tracking
    from statmech_nn.train import train

    reference = train(config)

    def stop_after_first(epoch: int, metrics: object) -> None:
        if epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(config, on_epoch_end=stop_after_first)
    killed = mlflow.search_runs(experiment_names=[experiment], filter_string="status = 'KILLED'")
    run_id = str(killed.run_id.item())
    assert tracking.list_checkpoints(run_id) == [0, 1]
    assert train(resume_run_id=run_id) == run_id
    return run_id, reference


def kept_masked_positions(
    model: Any, data: Any, tokens: list[int]
) -> Iterator[tuple[Any, int, int]]:
    """Literally, one sequence at a time through the Hugging Face model: for every masked
    position whose token is one of ``tokens``, ``(output with hidden states, position, label)``
    where the label is the token's index in ``tokens``. Hooks on the model see that sequence."""
    from statmech_nn.data.mlm import IGNORE_INDEX

    for index in range(len(data)):
        x, y = data[index]
        with torch.no_grad():
            out = model.net(
                input_ids=x["input_ids"][None],
                attention_mask=x["attention_mask"][None],
                output_hidden_states=True,
            )
        for t in range(len(y)):
            if y[t] != IGNORE_INDEX and int(y[t]) in tokens:
                yield out, t, tokens.index(int(y[t]))
