"""Study records survive killed workers: one final MLflow run per finished trial, no RUNNING rest.

A worker killed between Optuna's ``tell`` and the MLflow callback leaves a COMPLETE trial with no
run; one killed inside the callback leaves a RUNNING run without its metrics. Both states are
built here directly (what a SIGKILL at that instant leaves) and the next study invocation's
reconciliation must repair them.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from statmech_nn import cli, tracking
from statmech_nn.naming import KIND_STUDY, KIND_TAG, KIND_TRIAL, TRIAL_LOGGED_TAG
from statmech_nn.studies.mlflow_runs import (
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
    assert all(r.data.tags.get(TRIAL_LOGGED_TAG) == "1" for r in runs)
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
    # What a kill inside the callback leaves: a RUNNING trial run, no metrics, no logged tag.
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


def _process_mark(client, run_id: str) -> dict:
    return json.loads(client.get_run(run_id).data.tags[tracking.PROCESS_TAG])


def test_the_study_run_records_its_process_and_a_rerun_takes_it_over(target):
    """``_study_run`` itself marks the study run with this process, on creation and on reuse."""
    target, client = target
    mark = _process_mark(client, target.study_run_id)
    assert (mark["host"], mark["pid"]) == (socket.gethostname(), os.getpid())
    assert target.study_run_id not in tracking.sweep_dead_runs([target.experiment_id])  # alive
    dead = {"host": socket.gethostname(), "pid": 2**22 + 12345, "start": 1}
    client.set_tag(target.study_run_id, tracking.PROCESS_TAG, json.dumps(dead))
    assert target.study_run_id in tracking.sweep_dead_runs([target.experiment_id])
    parent = client.get_run(target.study_run_id).data.tags["mlflow.parentRunId"]
    again = _study_run(client, parent, "s", "journal:x")
    assert again == target.study_run_id
    assert client.get_run(again).info.status == "RUNNING"
    assert _process_mark(client, again)["pid"] == os.getpid()


ROOT = Path(__file__).resolve().parents[1]
SNP_FF = ["--sites", "ff", "--readout-epochs", "1", "--batch-size", "16", "--limit-train", "48",
          "--limit-eval", "24", "--device", "cpu", "--no-progress"]  # fmt: skip


def _complete_trials(journal: Path) -> int:
    """COMPLETE trials of the one study in the Optuna journal ``journal`` (0 before it exists)."""
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    if not journal.exists():
        return 0
    storage = JournalStorage(JournalFileBackend(str(journal)))
    summaries = optuna.get_all_study_summaries(storage)
    if not summaries:
        return 0
    study = optuna.load_study(study_name=summaries[0].study_name, storage=storage)
    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))


def _kill_mid_study(argv: list[str], journal: Path, timeout_s: float = 180) -> None:
    """Run ``statmech-nn ARGV`` in a subprocess and SIGKILL it once a trial is COMPLETE."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "statmech_nn.cli", *argv],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + timeout_s
    try:
        while _complete_trials(journal) < 1:
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            assert time.monotonic() < deadline, "no trial completed in time"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL  # killed mid-study, not finished
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.slow  # trains SNP readouts, then a study killed by SIGKILL and rerun
def test_a_study_killed_mid_run_and_rerun_keeps_one_final_run_per_trial(workdir, fake_training_run):
    train_id = fake_training_run((1,), seed=0, experiment="killed-study")
    assert cli.main(["snp", train_id, *SNP_FF]) == 0
    snp_id = _snp_child(train_id)
    argv = ["study", "andc", snp_id, "--study-name", "killed", "--kind", "ff"]
    journal = workdir / "mlruns" / "optuna.journal"
    _kill_mid_study([*argv, "--trials", "500"], journal)
    assert cli.main([*argv, "--trials", "2"]) == 0
    from statmech_nn.studies import open_storage

    study = optuna.load_study(study_name="killed", storage=open_storage(None))
    trials = study.get_trials(deepcopy=False)
    assert all(t.state.is_finished() for t in trials), [t.state for t in trials]
    client = MlflowClient(tracking_uri=tracking.current_uri())
    study_runs = client.search_runs(
        [client.get_run(snp_id).info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{snp_id}' and "
        f"tags.`{KIND_TAG}` = '{KIND_STUDY}'",
    )
    assert [r.info.status for r in study_runs] == ["FINISHED"]
    runs = client.search_runs(
        [study_runs[0].info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{study_runs[0].info.run_id}' and "
        f"tags.`{KIND_TAG}` = '{KIND_TRIAL}'",
        max_results=5000,
    )
    by_trial: dict[int, list[str]] = {}
    for run in runs:
        by_trial.setdefault(int(run.data.tags["optuna.trial_number"]), []).append(run.info.status)
    expected = {
        t.number: ["FINISHED" if t.state == TrialState.COMPLETE else "FAILED"] for t in trials
    }
    assert by_trial == expected


def _snp_child(train_id: str) -> str:
    from statmech_nn import snp

    return str(snp.load_from_run(train_id).attrs["mlflow_run_id"])


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
