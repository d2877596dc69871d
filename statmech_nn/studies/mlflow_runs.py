"""MLflow runs of a study: the study run under its SNP run, and one nested run per trial."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from statmech_nn.naming import KIND_STUDY, KIND_TAG, KIND_TRIAL
from statmech_nn.studies.objectives import METRICS_ATTR
from statmech_nn.studies.storage import _redact


@dataclass(frozen=True)
class MlflowTarget:
    """Where trial runs go: the tracking URI and the study run they are nested under."""

    tracking_uri: str
    experiment_id: str
    study_run_id: str
    study_name: str


def _retrying(fn: Callable[[], Any], attempts: int = 8) -> Any:
    delay = 0.05
    for attempt in range(attempts):
        try:
            return fn()
        except Exception:  # noqa: BLE001 - SQLite "database is locked" and friends
            if attempt == attempts - 1:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 2.0)
    return None


class MlflowTrialLogger:
    """Optuna callback: each finished trial becomes an MLflow run nested under the study run.

    Params: the trial's parameters (thresholds). Metrics: the ``metrics`` user attribute
    (``andc.accuracy``, ``andc.pruned_fraction``, per-site values) and the objective values.
    Tags: study name, trial number, state, retried trial. Status FINISHED for COMPLETE trials,
    FAILED otherwise. Writes are retried (SQLite stores are shared by several workers).
    """

    def __init__(self, target: MlflowTarget) -> None:
        self.target = target
        self._client = None

    @property
    def client(self):
        if self._client is None:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=self.target.tracking_uri)
        return self._client

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        from mlflow.entities import Metric, Param, RunTag

        tags = {
            "mlflow.parentRunId": self.target.study_run_id,
            "mlflow.runName": f"trial-{trial.number}",
            KIND_TAG: KIND_TRIAL,
            "optuna.study_name": self.target.study_name,
            "optuna.trial_number": str(trial.number),
            "optuna.state": trial.state.name,
        }
        retried = trial.system_attrs.get("failed_trial")
        if retried is not None:
            tags["optuna.retry_of"] = str(retried)
        run = _retrying(
            lambda: self.client.create_run(
                self.target.experiment_id, run_name=f"trial-{trial.number}", tags=tags
            )
        )
        run_id = run.info.run_id
        now = int(time.time() * 1000)
        metrics = dict(trial.user_attrs.get(METRICS_ATTR) or {})
        for i, value in enumerate(trial.values or []):
            metrics[f"objective.{i}"] = value
        for key, value in trial.constraints.items():
            metrics[f"constraint.{key}"] = value
        batch_metrics = [
            Metric(k, float(v), now, 0)
            for k, v in metrics.items()
            if isinstance(v, int | float) and math.isfinite(float(v))
        ]
        params = [
            Param(k, repr(v) if isinstance(v, float) else str(v)) for k, v in trial.params.items()
        ]
        _retrying(
            lambda: self.client.log_batch(
                run_id, metrics=batch_metrics, params=params, tags=[RunTag("optuna.logged", "1")]
            )
        )
        status = "FINISHED" if trial.state == TrialState.COMPLETE else "FAILED"
        _retrying(lambda: self.client.set_terminated(run_id, status))


def _study_run(client: Any, snp_run_id: str, study_name: str, storage: str) -> str:
    """The MLflow ``study`` run of ``study_name`` under ``snp_run_id``: reused, else created."""
    parent = _retrying(lambda: client.get_run(snp_run_id))
    exp = parent.info.experiment_id
    found = _retrying(
        lambda: client.search_runs(
            [exp],
            filter_string=(
                f"tags.mlflow.parentRunId = '{snp_run_id}' and "
                f"tags.`statmech.study_name` = '{study_name}'"
            ),
            max_results=1,
        )
    )
    if found:
        run_id = found[0].info.run_id
        _retrying(lambda: client.update_run(run_id, status="RUNNING"))
        return run_id
    tags = {
        "mlflow.parentRunId": snp_run_id,
        "mlflow.runName": "study",
        KIND_TAG: KIND_STUDY,
        "statmech.study_name": study_name,
        "statmech.optuna_storage": _redact(storage),
    }
    run = _retrying(lambda: client.create_run(exp, run_name="study", tags=tags))
    return run.info.run_id
