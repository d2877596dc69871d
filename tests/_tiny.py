"""Tiny models and data configs shared by the tests (imported as ``from _tiny import ...``)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

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
