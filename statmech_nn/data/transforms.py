"""Augmentation presets (torchvision.transforms.v2) and the batch-level mixup / cutmix.

Presets, applied to the training split only (validation and test always get ``eval``):

- ``none``: the evaluation transform.
- ``basic``: random crop with zero padding (4 pixels at 32 px, scaled with the image size) and a
  horizontal flip. Datasets that are not mirror-symmetric (digits: a flipped 2 or 7 is no longer
  that digit) skip the flip, in every preset.
- ``cct``: the CCT reference recipe (timm's train.py): RandomResizedCrop scale 0.8-1, ratio 3/4-4/3;
  horizontal flip; RandAugment (2 ops, magnitude 9); random erasing with probability 0.25 and
  per-pixel Gaussian values, after normalisation; and per batch either mixup (alpha 0.8) or cutmix
  (alpha 1.0), 50/50, with label smoothing 0.1 folded into the mixed soft targets. Differences from
  timm: bilinear instead of random / bicubic interpolation, torchvision's RandAugment (no magnitude
  noise, timm's ``mstd0.5``).
"""

from __future__ import annotations

from typing import Any

import torch
from torchvision.transforms import v2

AUGMENTS = ("none", "basic", "cct")
CCT_LABEL_SMOOTHING = 0.1


def _fit(img_size: int, source_size: int | None) -> list[v2.Transform]:
    """Bring a source image to ``img_size`` squared for evaluation."""
    if source_size is None:
        return [v2.Resize(img_size, antialias=True), v2.CenterCrop(img_size)]
    if source_size != img_size:
        return [v2.Resize((img_size, img_size), antialias=True)]
    return []


class Evaluate:
    """The evaluation transform, with a fast path for uint8 tensors already at the target size.

    That path (scale to [0, 1], then normalise) gives the same numbers as the v2 pipeline it
    stands for at about an eighth of the per-image overhead; anything else (PIL images, other
    sizes) goes through ``pipeline``.
    """

    def __init__(
        self, pipeline: v2.Compose, img_size: int, mean: tuple[float, ...], std: tuple[float, ...]
    ) -> None:
        self.pipeline = pipeline
        self.img_size = img_size
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)

    def __call__(self, image: torch.Tensor | Any) -> torch.Tensor:
        if (
            type(image) is torch.Tensor
            and image.dtype == torch.uint8
            and image.shape[-2:] == (self.img_size, self.img_size)
        ):
            return (image.to(torch.float32) / 255.0 - self.mean) / self.std
        return self.pipeline(image)

    def __repr__(self) -> str:
        return f"Evaluate({self.pipeline!r})"


def build_transforms(
    augment: str,
    img_size: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    *,
    hflip: bool = True,
    source_size: int | None = None,
) -> tuple[v2.Compose | Evaluate, Evaluate]:
    """``(train, eval)`` transforms from a raw image (uint8 tensor or PIL) to a normalised tensor.

    ``source_size`` is the side of the (square) source images, or None when sizes vary; then
    evaluation resizes the short side and crops the centre.
    """
    head = [v2.ToImage()]
    tail = [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
    flip = [v2.RandomHorizontalFlip()] if hflip else []
    pipeline = v2.Compose(head + _fit(img_size, source_size) + tail + [v2.ToPureTensor()])
    evaluation = Evaluate(pipeline, img_size, mean, std)
    if augment == "none":
        return evaluation, evaluation
    if augment == "basic":
        padding = max(1, round(4 * img_size / 32))
        crop = [v2.RandomCrop(img_size, padding=padding)]
        train = head + _fit(img_size, source_size) + crop + flip + tail
    elif augment == "cct":
        crop = [
            v2.RandomResizedCrop(img_size, scale=(0.8, 1.0), ratio=(3 / 4, 4 / 3), antialias=True)
        ]
        erase = [v2.RandomErasing(p=0.25, value="random")]
        train = head + crop + flip + [v2.RandAugment(num_ops=2, magnitude=9)] + tail + erase
    else:
        raise ValueError(f"unknown augment {augment!r}; expected one of {AUGMENTS}")
    return v2.Compose(train + [v2.ToPureTensor()]), evaluation


class MixupCutmix:
    """Per batch, mixup or cutmix (chosen 50/50) with label smoothing folded into the targets.

    ``(images [B, C, H, W], labels [B] int) -> (images, soft targets [B, num_classes])``; the
    targets are ``(1 - eps) * mixed one-hot + eps / num_classes``, as in timm, so each row sums
    to 1. Randomness comes from torch's global generator (seed it for reproducible runs).
    """

    def __init__(
        self,
        num_classes: int,
        mixup_alpha: float = 0.8,
        cutmix_alpha: float = 1.0,
        switch_prob: float = 0.5,
        label_smoothing: float = CCT_LABEL_SMOOTHING,
    ) -> None:
        self.num_classes = num_classes
        self.switch_prob = switch_prob
        self.label_smoothing = label_smoothing
        self.mixup = v2.MixUp(alpha=mixup_alpha, num_classes=num_classes)
        self.cutmix = v2.CutMix(alpha=cutmix_alpha, num_classes=num_classes)

    def __call__(
        self, images: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        use_cutmix = bool(torch.rand(()) < self.switch_prob)
        op = self.cutmix if use_cutmix else self.mixup
        images, soft = op(images, labels.long())
        eps = self.label_smoothing
        return images, soft * (1.0 - eps) + eps / self.num_classes

    def __repr__(self) -> str:
        return (
            f"MixupCutmix(num_classes={self.num_classes}, mixup_alpha={self.mixup.alpha}, "
            f"cutmix_alpha={self.cutmix.alpha}, switch_prob={self.switch_prob}, "
            f"label_smoothing={self.label_smoothing})"
        )
