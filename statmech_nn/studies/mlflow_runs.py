"""MLflow runs of a study: the study run under its SNP run, and one nested run per trial."""

from __future__ import annotations

import functools
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from statmech_nn import processes
from statmech_nn.naming import (
    KIND_STUDY,
    KIND_TAG,
    KIND_TRIAL,
    STUDY_NAME_TAG,
    STUDY_STORAGE_TAG,
    TRIAL_LOGGED_TAG,
    TRIAL_NUMBER_TAG,
    TRIAL_RETRY_TAG,
    TRIAL_STATE_TAG,
    TRIAL_STUDY_TAG,
)
from statmech_nn.studies.objectives import METRICS_ATTR
from statmech_nn.studies.storage import _redact
from statmech_nn.tracking import PROCESS_TAG


@dataclass(frozen=True)
class MlflowTarget:
    """Where trial runs go: the tracking URI and the study run they are nested under."""

    tracking_uri: str
    experiment_id: str
    study_run_id: str
    study_name: str


def _locked(exc: BaseException) -> bool:
    """SQLite's "database is locked": the one error worth retrying (MLflow retries HTTP itself)."""
    return "database is locked" in str(exc).lower()


def _retrying(fn: Callable[[], Any], attempts: int = 8) -> Any:
    """``fn()``, retried with back-off while a shared SQLite store is locked by another worker."""
    delay = 0.05
    for attempt in range(attempts):
        try:
            return fn()
        except Exception as exc:
            if attempt == attempts - 1 or not _locked(exc):
                raise
            time.sleep(delay)
            delay = min(delay * 2, 2.0)
    return None


def _ms(moment: datetime | None) -> int | None:
    return None if moment is None else int(moment.timestamp() * 1000)


"""Set on a trial run once its params and metrics are written: a run without it is incomplete."""


def trial_metrics(trial: FrozenTrial, objective_names: Sequence[str] = ()) -> dict[str, float]:
    """The finite metrics of a finished trial: its ``metrics`` attribute, objectives, constraints.

    Objectives are logged under the study's metric names when it has them (Optuna Dashboard shows
    the same names), else as ``objective.{i}``.
    """
    metrics = dict(trial.user_attrs.get(METRICS_ATTR) or {})
    for i, value in enumerate(trial.values or []):
        name = objective_names[i] if i < len(objective_names) else f"objective.{i}"
        metrics[name] = value
    for key, value in trial.constraints.items():
        metrics[f"constraint.{key}"] = value
    return {
        k: float(v)
        for k, v in metrics.items()
        if isinstance(v, int | float) and math.isfinite(float(v))
    }


class MlflowTrialLogger:
    """Optuna callback: each finished trial becomes one MLflow run nested under the study run.

    Params: the trial's parameters (thresholds). Metrics: the ``metrics`` user attribute
    (``andc.accuracy``, ``andc.pruned_fraction``, per-site values) and the objective values.
    Tags: study name, trial number, state, retried trial. Status FINISHED for COMPLETE trials,
    FAILED otherwise; start and end times are the trial's own. Idempotent: a trial that already
    has a complete run is skipped, an incomplete one (its logger was killed) is replaced, so a
    rerun's :meth:`reconcile` leaves exactly one final run per finished trial.
    """

    def __init__(self, target: MlflowTarget) -> None:
        self.target = target
        self._client: Any = None

    @property
    def client(self) -> Any:
        if self._client is None:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=self.target.tracking_uri)
        return self._client

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if not trial.state.is_finished():
            return
        runs = self._runs_of(trial.number)
        if any(run.data.tags.get(TRIAL_LOGGED_TAG) == "1" for run in runs):
            for run in runs:
                if run.data.tags.get(TRIAL_LOGGED_TAG) != "1":
                    _retrying(functools.partial(self.client.delete_run, run.info.run_id))
            return
        for run in runs:
            _retrying(functools.partial(self.client.delete_run, run.info.run_id))
        self._log(trial, _metric_names(study))

    def reconcile(self, study: optuna.Study) -> int:
        """Give every finished trial of ``study`` exactly one complete run; returns runs written."""
        done = {
            int(run.data.tags[TRIAL_NUMBER_TAG])
            for run in self._runs_of(None)
            if run.data.tags.get(TRIAL_LOGGED_TAG) == "1" and run.info.status != "RUNNING"
        }
        written = 0
        for trial in study.get_trials(deepcopy=False):
            if trial.state.is_finished() and trial.number not in done:
                self(study, trial)
                written += 1
        return written

    def _runs_of(self, number: int | None) -> list[Any]:
        """The (non-deleted) trial runs under the study run, of trial ``number`` or all."""
        query = (
            f"tags.mlflow.parentRunId = '{self.target.study_run_id}' and "
            f"tags.`{KIND_TAG}` = '{KIND_TRIAL}'"
        )
        if number is not None:
            query += f" and tags.`{TRIAL_NUMBER_TAG}` = '{number}'"
        found: list[Any] = []
        token = None
        while True:
            page = _retrying(
                functools.partial(
                    self.client.search_runs,
                    [self.target.experiment_id],
                    filter_string=query,
                    max_results=1000,
                    page_token=token,
                )
            )
            found.extend(page)
            token = getattr(page, "token", None)
            if not token:
                return found

    def _log(self, trial: FrozenTrial, objective_names: Sequence[str]) -> None:
        from mlflow.entities import Metric, Param

        tags = {
            "mlflow.parentRunId": self.target.study_run_id,
            "mlflow.runName": f"trial-{trial.number}",
            KIND_TAG: KIND_TRIAL,
            TRIAL_STUDY_TAG: self.target.study_name,
            TRIAL_NUMBER_TAG: str(trial.number),
            TRIAL_STATE_TAG: trial.state.name,
        }
        retried = trial.system_attrs.get("failed_trial")
        if retried is not None:
            tags[TRIAL_RETRY_TAG] = str(retried)
        start = _ms(trial.datetime_start)
        end = _ms(trial.datetime_complete) or int(time.time() * 1000)
        run = _retrying(
            lambda: self.client.create_run(
                self.target.experiment_id,
                run_name=f"trial-{trial.number}",
                tags=tags,
                start_time=start,
            )
        )
        run_id = run.info.run_id
        batch_metrics = [
            Metric(k, v, end, 0) for k, v in trial_metrics(trial, objective_names).items()
        ]
        params = [
            Param(k, repr(v) if isinstance(v, float) else str(v)) for k, v in trial.params.items()
        ]
        _retrying(lambda: self.client.log_batch(run_id, metrics=batch_metrics, params=params))
        status = "FINISHED" if trial.state == TrialState.COMPLETE else "FAILED"
        _retrying(lambda: self.client.set_terminated(run_id, status, end_time=end))
        _retrying(lambda: self.client.set_tag(run_id, TRIAL_LOGGED_TAG, "1"))


def _metric_names(study: optuna.Study) -> list[str]:
    """The study's objective names (``study.set_metric_names``), or none."""
    names = study.metric_names
    return list(names) if names else []


def _study_run(client: Any, snp_run_id: str, study_name: str, storage: str) -> str:
    """The MLflow ``study`` run of ``study_name`` under ``snp_run_id``: reused, else created."""
    parent = _retrying(lambda: client.get_run(snp_run_id))
    exp = parent.info.experiment_id
    found = _retrying(
        lambda: client.search_runs(
            [exp],
            filter_string=(
                f"tags.mlflow.parentRunId = '{snp_run_id}' and "
                f"tags.`{STUDY_NAME_TAG}` = '{study_name}'"
            ),
            max_results=1,
        )
    )
    if found:
        run_id = found[0].info.run_id
        _retrying(lambda: client.update_run(run_id, status="RUNNING"))
        _retrying(lambda: client.set_tag(run_id, PROCESS_TAG, json.dumps(processes.identity())))
        return run_id
    tags = {
        "mlflow.parentRunId": snp_run_id,
        "mlflow.runName": "study",
        KIND_TAG: KIND_STUDY,
        PROCESS_TAG: json.dumps(processes.identity()),
        STUDY_NAME_TAG: study_name,
        STUDY_STORAGE_TAG: _redact(storage),
    }
    run = _retrying(lambda: client.create_run(exp, run_name="study", tags=tags))
    return run.info.run_id
