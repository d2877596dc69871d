"""Study records survive killed workers: one final MLflow run per finished trial, no RUNNING rest.

A worker killed between Optuna's ``tell`` and the MLflow callback leaves a COMPLETE trial with no
run; one killed inside the callback leaves a RUNNING run without its metrics. Both states are
built here directly (what a SIGKILL at that instant leaves) and the next study invocation's
reconciliation must repair them.
"""

from __future__ import annotations

import json

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from statmech_nn import tracking
from statmech_nn.naming import KIND_TAG, KIND_TRIAL
from statmech_nn.studies.mlflow_runs import (
    LOGGED_TAG,
    MlflowTarget,
    MlflowTrialLogger,
    _study_run,
)
from statmech_nn.studies.recovery import retry_trial

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture
def target(workdir):
    uri = tracking.init_store(None)
    client = MlflowClient(tracking_uri=uri)
    exp = tracking.experiment_id("records")
    parent = client.create_run(exp, run_name="snp").info.run_id
    study_run = _study_run(client, parent, "s", "journal:x")
    return MlflowTarget(uri, exp, study_run, "s"), client


def _study_with_trials(n: int) -> optuna.Study:
    study = optuna.create_study(directions=["maximize", "minimize"])
    for i in range(n):
        trial = study.ask()
        trial.suggest_float("theta", 0.1, 0.9)
        trial.set_user_attr("metrics", {"andc.accuracy": 0.5 + i / 100})
        study.tell(trial, [0.5, 0.1 * i])
    return study


def _trial_runs(client, target):
    return client.search_runs(
        [target.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{target.study_run_id}' and "
        f"tags.`{KIND_TAG}` = '{KIND_TRIAL}'",
    )


def _one_final_run_per_trial(client, target, study):
    runs = _trial_runs(client, target)
    numbers = sorted(int(r.data.tags["optuna.trial_number"]) for r in runs)
    finished = sorted(t.number for t in study.get_trials() if t.state.is_finished())
    assert numbers == finished
    assert all(r.info.status in ("FINISHED", "FAILED") for r in runs)
    assert all(r.data.tags.get(LOGGED_TAG) == "1" for r in runs)
    return runs


def test_a_complete_trial_without_a_run_gets_one(target):
    target, client = target
    study = _study_with_trials(3)
    logger = MlflowTrialLogger(target)
    logger(study, study.trials[0])  # trials 1 and 2: the worker died before its callback
    assert len(_trial_runs(client, target)) == 1
    assert logger.reconcile(study) == 2
    runs = _one_final_run_per_trial(client, target, study)
    assert {r.data.metrics["andc.accuracy"] for r in runs} == {0.5, 0.51, 0.52}


def test_a_run_killed_mid_callback_is_replaced_not_duplicated(target):
    target, client = target
    study = _study_with_trials(2)
    # What a kill inside the callback leaves: a RUNNING trial run without metrics or LOGGED_TAG.
    client.create_run(
        target.experiment_id,
        tags={
            "mlflow.parentRunId": target.study_run_id,
            KIND_TAG: KIND_TRIAL,
            "optuna.trial_number": "1",
        },
    )
    logger = MlflowTrialLogger(target)
    logger(study, study.trials[0])
    logger.reconcile(study)
    logger.reconcile(study)  # idempotent
    runs = _one_final_run_per_trial(client, target, study)
    assert len(runs) == 2


def test_calling_the_logger_twice_keeps_one_run(target):
    target, client = target
    study = _study_with_trials(1)
    logger = MlflowTrialLogger(target)
    logger(study, study.trials[0])
    logger(study, study.trials[0])
    assert len(_one_final_run_per_trial(client, target, study)) == 1


def test_trial_runs_carry_the_trials_own_times(target):
    target, client = target
    study = _study_with_trials(1)
    MlflowTrialLogger(target)(study, study.trials[0])
    run = _trial_runs(client, target)[0]
    trial = study.trials[0]
    assert run.info.start_time == int(trial.datetime_start.timestamp() * 1000)
    assert run.info.end_time == int(trial.datetime_complete.timestamp() * 1000)


def test_the_study_run_of_a_dead_process_is_swept(target):
    target, client = target
    dead = {"host": __import__("socket").gethostname(), "pid": 2**22 + 12345, "start": 1}
    client.set_tag(target.study_run_id, tracking.PROCESS_TAG, json.dumps(dead))
    marked = tracking.sweep_dead_runs([target.experiment_id])
    assert target.study_run_id in marked
    assert client.get_run(target.study_run_id).info.status == "KILLED"


def test_retry_trial_queues_one_copy_even_when_asked_twice():
    study = optuna.create_study()
    trial = study.ask()
    trial.suggest_float("x", 0, 1)
    frozen = study.trials[0]
    assert retry_trial(study, frozen) is True
    assert retry_trial(study, frozen) is False  # already failed: no second copy
    states = [t.state for t in study.trials]
    assert states.count(TrialState.FAIL) == 1
    assert states.count(TrialState.WAITING) == 1
