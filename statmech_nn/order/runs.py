"""The training run that an analysis run belongs to (the SNP run lookup is ``snp.find_snp_run``)."""

from __future__ import annotations

from typing import Any

from statmech_nn.naming import KIND_TAG, KIND_TRAIN


def training_run_of(run_id: str) -> str:
    """The training run of ``run_id``: itself, or its parent when it is a child (snp, order...)."""
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

    from statmech_nn import tracking

    run: Any = tracking.get_run(run_id)
    kind = run.data.tags.get(KIND_TAG)
    parent = run.data.tags.get(MLFLOW_PARENT_RUN_ID)
    if kind not in (None, KIND_TRAIN, "training") and parent:
        return parent
    return run_id
