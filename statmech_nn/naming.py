"""One home for the names the toolkit writes and reads: MLflow tags, run kinds, layer labels.

Every module that writes or parses a tag, a run kind or a layer-named metric imports it from here,
so a rename happens in one place. Also the one threshold comparison that every binarisation and
ANDC mask uses (see :func:`exceeds`).
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from statmech_nn.errors import ThresholdError

# MLflow tags.
KIND_TAG = "statmech_nn.kind"
"""Tag naming what a run holds (one of the ``KIND_*`` values below)."""

PROCESS_TAG = "statmech_nn.process"
"""Tag holding the host, pid and start time of the process that runs (or last resumed) a run."""

ENDED_BY_TAG = "statmech_nn.ended_by"
"""Tag saying who ended a run that its own process could not end (the sweep)."""

SOURCE_TAG = "statmech_nn.source"
"""Tag of a model run imported from elsewhere (value ``foreign``) rather than trained here."""

STUDY_NAME_TAG = "statmech.study_name"
"""Tag of a study run: the Optuna study it records."""
STUDY_STORAGE_TAG = "statmech.optuna_storage"
"""Tag of a study run: the Optuna storage URL, password redacted."""
TRIAL_NUMBER_TAG = "optuna.trial_number"
"""Tag of a trial run: the Optuna trial number."""
TRIAL_STUDY_TAG = "optuna.study_name"
TRIAL_STATE_TAG = "optuna.state"
TRIAL_RETRY_TAG = "optuna.retry_of"
"""Tag of a trial run that retries a failed trial: that trial's number."""
TRIAL_LOGGED_TAG = "optuna.logged"
"""Tag of a trial run whose metrics and params are all logged (its record is complete)."""

KIND_TRAIN = "train"
KIND_SNP = "snp"
KIND_ORDER = "order"
KIND_SCALING = "scaling"
KIND_STUDY = "study"
KIND_TRIAL = "trial"
KIND_ANDC_NETWORK = "andc-network"
KIND_COOPERATION = "cooperation"
KIND_FINDINGS = "findings"

# Layer labels in metric names: ``block3`` (transformer blocks), ``conv4`` (CNN layers),
# ``layer7`` (anything else).
LAYER_PREFIXES = ("block", "conv", "layer")
LAYER_LABEL = re.compile(r"^(?P<label>(?P<prefix>block|conv|layer)(?P<index>\d+))(?:\.|$)")
"""A name that starts with a layer label: ``block3``, ``block3.mha``, ``conv4``."""

LAYERED_METRIC = re.compile(
    r"^(?P<family>.+)\.(?P<label>(?P<prefix>block|conv|layer)(?P<index>\d+))$"
)
"""A metric whose last field is a layer label: ``snr.ff.block3`` -> family ``snr.ff``."""


def layer_label(kind: str, layer: int) -> str:
    """Default layer label in metric names: ``conv{i}`` for CNN layers, else ``block{i}``."""
    return f"conv{layer}" if kind == "conv" else f"block{layer}"


def layer_order(label: str) -> tuple[str, int]:
    """Sort key of a layer label in depth order: ``block2`` before ``block10``; others last."""
    match = LAYER_LABEL.match(label)
    return (match["prefix"], int(match["index"])) if match else (label, -1)


def layer_label_of_site_name(name: str) -> str | None:
    """``block3`` from ``block3.mha`` (a site name of ours), ``None`` for other names."""
    match = LAYER_LABEL.match(name)
    return match.group("label") if match else None


def check_theta(theta: Any) -> float:
    """``theta`` as a float in the open interval (0, 1), else :class:`ThresholdError`."""
    try:
        value = float(theta)
    except (TypeError, ValueError):
        raise ThresholdError(f"threshold theta={theta!r} is not a number in (0, 1)") from None
    if not 0.0 < value < 1.0:
        raise ThresholdError(
            f"threshold theta={theta} is outside (0, 1): matrices are normalised to a maximum "
            "of 1, so pick e.g. 0.3"
        )
    return value


def exceeds(values: Any, theta: Any) -> Any:
    """``values > theta`` compared in the values' own floating dtype (strict; NaN gives False).

    Stored matrices are float32: comparing them against a float64 theta would count
    ``float32(0.3)`` as above ``0.3``. Every binarisation and ANDC mask uses this one rule.
    ``theta`` may be a scalar or an array broadcastable against ``values`` (numpy or xarray).
    """
    dtype = getattr(values, "dtype", None)
    if dtype is None or not np.issubdtype(dtype, np.floating):
        dtype = np.float64
    return values > np.asarray(theta).astype(dtype)
