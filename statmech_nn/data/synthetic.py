"""Procedural CIFAR-shaped images with a two-level label hierarchy: the ground truth for clusters.

Class ``c = s * num_sub + k`` is subclass ``k`` of superclass ``s``. Everything coarse is fixed by
the superclass, so the labels of one superclass look alike:

- the object's shape: disk, square, triangle, ring or cross (``s mod 5``);
- the orientation of the grating texture inside it: ``(s // 5) * 45`` degrees, shifted by
  22.5 degrees for every further block of 20 superclasses;
- the base hue, ``s * 0.618... mod 1`` (golden-ratio spacing keeps neighbours apart).

The subclass only adds fine detail: a hue shift of ``(k - (num_sub - 1) / 2) * hue_step`` around
the base hue and the grating's spatial frequency (2 to 6 cycles per image width, spread evenly over
the subclasses). Each sample draws, from a generator seeded by ``(data_seed, split, index)``, a
position jitter, size, rotation, grating phase, background grey level, colour jitter and Gaussian
pixel noise (std ``noise``). Images are therefore reproducible one by one, never stored, and the
sample at a given index is the same whatever batch it is rendered in.

Sample ``i`` of a split has class ``i mod num_classes``, so every prefix of a split is balanced.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from statmech_nn.data.hierarchy import LabelHierarchy

SHAPES = ("disk", "square", "triangle", "ring", "cross")
SPLIT_IDS = {"train": 0, "test": 1}
GOLDEN = (math.sqrt(5) - 1) / 2


@dataclass(frozen=True)
class SyntheticConfig(LabelHierarchy):
    """Parameters of the generator (the ``**options`` of ``load("synthetic", ...)``)."""

    num_super: int = 20
    num_sub: int = 5
    n_train_per_class: int = 100
    n_test_per_class: int = 20
    data_seed: int = 0
    noise: float = 0.1
    hue_step: float = 0.03


def _hsv_to_rgb(h: np.ndarray, s: float, v: float) -> np.ndarray:
    """RGB in [0, 1], shape ``h.shape + (3,)``, of hues ``h`` at fixed saturation and value."""
    n = np.array([5.0, 3.0, 1.0])
    k = (n + h[..., None] * 6.0) % 6.0
    return v - v * s * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)


def _shape_field(shape: int, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Signed distance-like field (< 0 inside) of one shape in the object's unit frame."""
    if shape == 0:
        return np.sqrt(x * x + y * y) - 1.0
    if shape == 1:
        return np.maximum(np.abs(x), np.abs(y)) - 0.85
    if shape == 2:
        edges = [-y - 0.5, (math.sqrt(3) * x + y) / 2 - 0.5, (-math.sqrt(3) * x + y) / 2 - 0.5]
        return np.maximum.reduce(edges) * 1.3
    if shape == 3:
        return np.abs(np.sqrt(x * x + y * y) - 0.72) - 0.28
    bar_v = np.maximum(np.abs(x) - 0.3, np.abs(y) - 1.0)
    bar_h = np.maximum(np.abs(x) - 1.0, np.abs(y) - 0.3)
    return np.minimum(bar_v, bar_h)


def _signed_distance(shape: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Each sample's own shape field; ``shape`` (n,), ``x`` and ``y`` (n, H, W)."""
    out = np.empty_like(x)
    for kind in np.unique(shape):
        rows = shape == kind
        out[rows] = _shape_field(int(kind), x[rows], y[rows])
    return out


class SyntheticSource(torch.utils.data.Dataset):
    """One split of the synthetic dataset: ``(uint8 image [3, H, W], label)``, rendered on demand.

    Indexing renders the whole block of ``BLOCK`` samples around the index at once (vectorised,
    far cheaper per image than one by one) and keeps the uint8 pixels, so an epoch renders each
    image once and later epochs only read them (3 KB per image at 32 px).
    """

    BLOCK = 256

    def __init__(self, config: SyntheticConfig, split: str, img_size: int = 32) -> None:
        if split not in SPLIT_IDS:
            raise ValueError(f"split must be one of {list(SPLIT_IDS)}, got {split!r}")
        self.config = config
        self.split = split
        self.img_size = img_size
        per_class = config.n_train_per_class if split == "train" else config.n_test_per_class
        self.length = per_class * config.num_classes
        self.targets = [i % config.num_classes for i in range(self.length)]
        self._pixels: torch.Tensor | None = None
        self._rendered = np.zeros(-(-self.length // self.BLOCK), dtype=bool)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} samples")
        block = index // self.BLOCK
        if self._pixels is None:
            self._pixels = torch.empty(
                (self.length, 3, self.img_size, self.img_size), dtype=torch.uint8
            )
        if not self._rendered[block]:
            start = block * self.BLOCK
            rows = np.arange(start, min(start + self.BLOCK, self.length))
            self._pixels[start : start + len(rows)] = self.render(rows)
            self._rendered[block] = True
        return self._pixels[index].clone(), self.targets[index]

    def _sample_params(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-sample jitter (n, 9) and pixel noise (n, 3, H, W), each from its own stream."""
        size = self.img_size
        params = np.empty((len(indices), 9))
        noise = np.empty((len(indices), 3, size, size), dtype=np.float32)
        split_id = SPLIT_IDS[self.split]
        for row, index in enumerate(indices):
            rng = np.random.default_rng([self.config.data_seed, split_id, int(index)])
            params[row] = rng.random(9)
            noise[row] = rng.standard_normal((3, size, size), dtype=np.float32)
        return params, noise

    def render(self, indices: list[int] | np.ndarray, chunk: int = 512) -> torch.Tensor:
        """The uint8 images ``[n, 3, H, W]`` of the given sample indices (vectorised by chunks)."""
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        parts = [self._render(indices[i : i + chunk]) for i in range(0, len(indices), chunk)]
        if not parts:
            return torch.zeros((0, 3, self.img_size, self.img_size), dtype=torch.uint8)
        return torch.from_numpy(np.concatenate(parts))

    def _render(self, indices: np.ndarray) -> np.ndarray:
        cfg = self.config
        labels = indices % cfg.num_classes
        sup, sub = labels // cfg.num_sub, labels % cfg.num_sub
        params, noise = self._sample_params(indices)
        size = self.img_size
        grid = ((np.arange(size) + 0.5) / size * 2.0 - 1.0).astype(np.float32)
        gy, gx = np.meshgrid(grid, grid, indexing="ij")

        def per_sample(values: np.ndarray) -> np.ndarray:
            return values.astype(np.float32)[:, None, None]

        radius = per_sample(0.55 * (0.85 + 0.3 * params[:, 2]))
        rotation = (params[:, 3] - 0.5) * math.radians(30)
        phase = per_sample(params[:, 4] * 2 * math.pi)
        background = per_sample(0.25 + 0.2 * params[:, 5])[:, None]
        colour_jitter = (params[:, 6:9] - 0.5) * 0.1

        dx = gx[None] - per_sample((params[:, 0] - 0.5) * 0.3)
        dy = gy[None] - per_sample((params[:, 1] - 0.5) * 0.3)
        cos, sin = per_sample(np.cos(rotation)), per_sample(np.sin(rotation))
        x = (cos * dx + sin * dy) / radius
        y = (cos * dy - sin * dx) / radius
        inside = 1.0 / (1.0 + np.exp(12.0 * _signed_distance(sup % len(SHAPES), x, y)))

        theta = (sup // 5 % 4) * (math.pi / 4) + (sup // 20) * (math.pi / 8)
        frequency = 2.0 + 4.0 * sub / max(cfg.num_sub - 1, 1)
        along = per_sample(np.cos(theta)) * x + per_sample(np.sin(theta)) * y
        grating = 0.5 + 0.5 * np.cos(
            np.float32(math.pi) * per_sample(frequency) * along * radius + phase
        )

        hue = (sup * GOLDEN + (sub - (cfg.num_sub - 1) / 2) * cfg.hue_step) % 1.0
        colour = np.clip(_hsv_to_rgb(hue, 0.75, 0.9) + colour_jitter, 0.0, 1.0).astype(np.float32)
        foreground = colour[:, :, None, None] * (0.6 + 0.4 * grating)[:, None]
        image = background + inside[:, None] * (foreground - background)
        image += np.float32(cfg.noise) * noise
        return np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)
