"""ANDC pruning (docs/methods.md section 8): readout masks, the random control, network-level ANDC.

Modules: ``masks`` (the numpy core of the readout masks and its thin xarray wrappers),
``features`` (the feature cache that evaluates a masked readout without the backbone),
``curve`` (ANDC against the random control over thresholds), ``readout_retrain`` (a masked
readout's torch weights), ``network`` (network-level masks on a model's weights), ``retrain``
(the short retraining and test accuracy) and ``run`` (network-level ANDC of a training run).
"""

from __future__ import annotations

from statmech_nn.errors import ThresholdError
from statmech_nn.pruning.curve import random_control_curve
from statmech_nn.pruning.features import CACHE_SCHEMA, FeatureCache, SiteFeatures, site_features
from statmech_nn.pruning.masks import (
    VARIANTS,
    andc_keep,
    andc_mask,
    check_variant,
    cluster_sizes,
    diagonals,
    keep_from_clusters,
    keep_from_diagonals,
    pruned_fraction,
    pruned_fraction_of,
    random_keep,
    random_mask,
    theta_per_layer,
    valid_from_diagonals,
)
from statmech_nn.pruning.network import (
    Connection,
    MissingSnpSitesError,
    apply_network_masks,
    check_snp_sites,
    connections,
    masked_weight_fraction,
    network_mask,
    network_masks,
    random_network_masks,
    remove_network_masks,
    removed_weights,
    required_sites,
    weight_mask,
)
from statmech_nn.pruning.readout_retrain import expand_mask, mask_weight, retrain_masked
from statmech_nn.pruning.retrain import RetrainSettings, evaluate_accuracy, retrain
from statmech_nn.pruning.run import (
    KIND,
    METRIC_PREFIX,
    for_run,
    prune_model,
    prune_network,
    summary_lines,
)

__all__ = [
    "CACHE_SCHEMA",
    "KIND",
    "METRIC_PREFIX",
    "VARIANTS",
    "Connection",
    "FeatureCache",
    "MissingSnpSitesError",
    "RetrainSettings",
    "SiteFeatures",
    "ThresholdError",
    "andc_keep",
    "andc_mask",
    "apply_network_masks",
    "check_snp_sites",
    "check_variant",
    "cluster_sizes",
    "connections",
    "diagonals",
    "evaluate_accuracy",
    "expand_mask",
    "for_run",
    "keep_from_clusters",
    "keep_from_diagonals",
    "mask_weight",
    "masked_weight_fraction",
    "network_mask",
    "network_masks",
    "prune_model",
    "prune_network",
    "pruned_fraction",
    "pruned_fraction_of",
    "random_control_curve",
    "random_keep",
    "random_mask",
    "random_network_masks",
    "remove_network_masks",
    "removed_weights",
    "required_sites",
    "retrain",
    "retrain_masked",
    "site_features",
    "summary_lines",
    "theta_per_layer",
    "valid_from_diagonals",
    "weight_mask",
]
