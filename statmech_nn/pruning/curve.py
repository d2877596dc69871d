"""ANDC against the random control over a grid of thresholds, on a feature cache."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from statmech_nn.naming import check_theta
from statmech_nn.pruning.features import FeatureCache
from statmech_nn.pruning.masks import (
    andc_keep,
    pruned_fraction_of,
    random_keep,
    valid_from_diagonals,
)

CURVE_KEYS = ("theta", "fraction", "andc_accuracy", "random_mean", "random_std")


def random_control_curve(
    cache: FeatureCache,
    diag: np.ndarray,
    thetas: Sequence[float],
    draws: int = 5,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Accuracy vs pruned fraction of ANDC and of the random control over a grid of thresholds.

    ``diag[layer, node, label]`` are the SNP diagonals of ``cache.layers`` (NaN for padding).
    For each global ``theta``: the ANDC mask, ``draws`` random masks with the same per-node counts
    (seeded), their mean accuracy over layers, and the pruned fraction. Returns arrays
    ``theta``, ``fraction``, ``andc_accuracy``, ``random_mean``, ``random_std``.
    """
    rng = np.random.default_rng(seed)
    valid = valid_from_diagonals(diag)
    rows: dict[str, list[float]] = {k: [] for k in CURVE_KEYS}
    for theta in thetas:
        value = check_theta(theta)
        keep = andc_keep(np.full(diag.shape[0], value), diag, valid=valid)
        rand = random_keep(keep, rng, draws)
        andc_acc = [float(cache.accuracy(layer, keep[i])) for i, layer in enumerate(cache.layers)]
        per_draw = np.mean(
            [cache.accuracy(layer, rand[:, i]) for i, layer in enumerate(cache.layers)], axis=0
        )
        rows["theta"].append(value)
        rows["fraction"].append(float(pruned_fraction_of(keep, valid[..., None])))
        rows["andc_accuracy"].append(float(np.mean(andc_acc)))
        rows["random_mean"].append(float(per_draw.mean()))
        rows["random_std"].append(float(per_draw.std()))
    return {k: np.asarray(v) for k, v in rows.items()}
