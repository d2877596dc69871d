"""scikit-learn's bundled handwritten digits (1797 real 8x8 images, offline) as RGB images.

Each 8x8 image (grey levels 0..16) is scaled to [0, 1], resized bilinearly to ``img_size``,
stored as uint8 and replicated to 3 channels so that CIFAR models run unchanged. The test split
is a stratified 20 % held out with a fixed seed (``TEST_SEED``), independent of the run's seed,
so every run is tested on the same images; the validation split is carved from the rest.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from statmech_nn.data.splits import TensorSource, stratified_split

TEST_FRACTION = 0.2
TEST_SEED = 0
NUM_IMAGES = 1797


def digit_images(img_size: int) -> tuple[torch.Tensor, list[int]]:
    """All 1797 digits as uint8 ``[N, 3, img_size, img_size]`` and their labels."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    grey = torch.as_tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    if img_size != grey.shape[-1]:
        grey = F.interpolate(grey, size=(img_size, img_size), mode="bilinear", align_corners=False)
    images = torch.round(grey.clamp(0.0, 1.0) * 255.0).to(torch.uint8).expand(-1, 3, -1, -1)
    return images.contiguous(), [int(t) for t in bunch.target]


def build_digits(img_size: int) -> tuple[TensorSource, TensorSource, dict[str, list[int]]]:
    """``(train pool, test, index)``; ``index`` maps each split to rows of ``load_digits()``."""
    images, targets = digit_images(img_size)
    pool, test = stratified_split(targets, TEST_FRACTION, TEST_SEED)
    index = {"pool": pool.tolist(), "test": test.tolist()}
    make = lambda rows: TensorSource(images[rows], [targets[i] for i in rows])  # noqa: E731
    return make(pool), make(test), index
