"""statmech-nn: single-nodal-performance analysis of trained neural networks.

From the microscopic performance of each node (its labels x labels matrix) to the macroscopic
order parameters of the network (clusters, noise, SNR, head symmetry breaking), after
Koresh et al., Physica A 666 (2025) 130529.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["__version__", "load_snp"]


def load_snp(run_id: str, **kwargs: Any):
    """The SNP ``xarray.Dataset`` logged by the MLflow run ``run_id`` (see ``statmech_nn.snp``)."""
    from statmech_nn.snp import load_from_run

    return load_from_run(run_id, **kwargs)
