"""Phase 3: single-node (SNP) and single-head matrices of every site, as an xarray Dataset.

docs/methods.md sections 4 and 9; docs/architecture.md gives the Dataset and its stored form. The
package follows the data flow, each module importing only the ones before it:

- :mod:`~statmech_nn.snp.engine`: the science (streaming class sums -> raw matrices,
  normalisation); pure, no I/O.
- :mod:`~statmech_nn.snp.dataset`: the SNP ``xarray.Dataset`` (:func:`compute`) and
  :func:`binarize`.
- :mod:`~statmech_nn.snp.store`: netCDF :func:`save` / :func:`load` / :func:`validate` and the
  trained-readout files.
- :mod:`~statmech_nn.snp.runs`: MLflow ``snp`` runs (:func:`for_run` / :func:`compute_for_run`,
  :func:`load_from_run`, :func:`find_snp_run`, :func:`load_readouts`).
- :mod:`~statmech_nn.snp.reference`: the slow literal procedure tests compare against.
- :mod:`~statmech_nn.snp.tokens`, :mod:`~statmech_nn.snp.token_compute`,
  :mod:`~statmech_nn.snp.token_runs`: token-level SNP of a masked-language-model run (section
  10): the science, the readouts per masked position, and its ``snp`` run (``readout="token"``).
"""

from __future__ import annotations

from statmech_nn.errors import ThresholdError
from statmech_nn.snp.dataset import SCHEMA, binarize, build_dataset, compute
from statmech_nn.snp.engine import (
    SILENCINGS,
    SPLITS,
    SiteMatrices,
    check_options,
    head_count,
    head_pooled_features,
    matrices,
    node_features,
    normalise,
)
from statmech_nn.snp.runs import (
    ARTIFACT_PATH,
    SnpRun,
    compute_for_run,
    find_snp_run,
    for_run,
    load_from_run,
    load_readouts,
)
from statmech_nn.snp.store import (
    READOUTS_FILE,
    READOUTS_META,
    READOUTS_SCHEMA,
    load,
    read_readouts,
    save,
    save_readouts,
    validate,
)

__all__ = [
    "ARTIFACT_PATH",
    "READOUTS_FILE",
    "READOUTS_META",
    "READOUTS_SCHEMA",
    "SCHEMA",
    "SILENCINGS",
    "SPLITS",
    "SiteMatrices",
    "SnpRun",
    "ThresholdError",
    "binarize",
    "build_dataset",
    "check_options",
    "compute",
    "compute_for_run",
    "find_snp_run",
    "for_run",
    "head_count",
    "load",
    "load_from_run",
    "load_readouts",
    "matrices",
    "head_pooled_features",
    "node_features",
    "normalise",
    "read_readouts",
    "save",
    "save_readouts",
    "validate",
]
