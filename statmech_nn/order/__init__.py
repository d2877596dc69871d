"""Order parameters of SNP matrices: clusters, noise, signal, SNR, head symmetry breaking.

docs/methods.md sections 5 and 6. ``clusters`` works on raw boolean arrays, ``stats`` and
``symmetry`` on the SNP ``xarray.Dataset`` (see docs/architecture.md), ``schema`` reads it;
``pipeline.for_run`` is the analysis of an MLflow SNP run that ``statmech-nn order`` runs.
"""

from __future__ import annotations

from statmech_nn.errors import ThresholdError
from statmech_nn.naming import check_theta
from statmech_nn.order.clusters import NodeClusters, greedy_clusters, node_clusters
from statmech_nn.order.metrics import layer_labels, site_metrics, symmetry_metrics
from statmech_nn.order.pipeline import OrderOptions, OrderResult, for_run
from statmech_nn.order.schema import head_kinds, kinds, node_matrices, valid_nodes
from statmech_nn.order.stats import SNR_VARIANTS, site_statistics, snr, statistics
from statmech_nn.order.symmetry import (
    expertise,
    head_symmetry,
    null_distribution,
    order_parameter,
    permuted_heads,
)
from statmech_nn.snp.dataset import binarize

__all__ = [
    "SNR_VARIANTS",
    "NodeClusters",
    "OrderOptions",
    "OrderResult",
    "ThresholdError",
    "binarize",
    "check_theta",
    "expertise",
    "for_run",
    "greedy_clusters",
    "head_kinds",
    "head_symmetry",
    "kinds",
    "layer_labels",
    "node_clusters",
    "node_matrices",
    "null_distribution",
    "order_parameter",
    "permuted_heads",
    "site_metrics",
    "site_statistics",
    "snr",
    "statistics",
    "symmetry_metrics",
    "valid_nodes",
]
