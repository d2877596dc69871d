"""Finding the MLflow runs the order parameters work on: SNP child runs and their training run."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

KIND_TAG = "statmech_nn.kind"
PARENT_TAG = "mlflow.parentRunId"


@dataclass
class SnpRun:
    """An SNP child run and the training run it belongs to (None when it has no parent)."""

    snp_run_id: str
    training_run_id: str | None
    experiment_id: str


def find_snp_run(run_id: str) -> SnpRun:
    """``run_id`` itself if it is an SNP run, else the newest finished SNP child of ``run_id``.

    Raises :class:`TrackingError` for an unknown run or a run without SNP child runs.
    """
    from mlflow.tracking import MlflowClient

    from statmech_nn import tracking
    from statmech_nn.snp import find_snp_run as newest_snp

    run = tracking.get_run(run_id)
    found = newest_snp(MlflowClient(), run)
    if found.info.run_id == run_id:
        return SnpRun(run_id, run.data.tags.get(PARENT_TAG), run.info.experiment_id)
    return SnpRun(found.info.run_id, run_id, run.info.experiment_id)


def training_run_of(run_id: str) -> str:
    """The training run of ``run_id``: itself, or its parent when it is a child (snp, order...)."""
    from statmech_nn import tracking

    run: Any = tracking.get_run(run_id)
    kind = run.data.tags.get(KIND_TAG)
    parent = run.data.tags.get(PARENT_TAG)
    if kind not in (None, "train", "training") and parent:
        return parent
    return run_id
