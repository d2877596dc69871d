"""Optuna studies on ANDC thresholds: storages, resume, bad input, MLflow, several workers."""

from __future__ import annotations

import multiprocessing
import os
import time
import uuid
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from statmech_nn import studies
from statmech_nn.errors import ThresholdError
from statmech_nn.studies import (
    OBJECTIVES,
    Heartbeat,
    ProblemObjective,
    StorageError,
    StudyMismatchError,
    StudySpec,
    constrained_objective,
    ensure_study,
    normalize_storage,
    open_storage,
    run_andc_study,
    run_workers,
    synthetic_problem,
)

PG_URL = os.environ.get("STATMECH_TEST_POSTGRES_URL")
if os.environ.get("CI") and not PG_URL:
    raise RuntimeError("CI must run the PostgreSQL tests: .ci/postgres.sh did not start a server")
needs_pg = pytest.mark.skipif(
    not PG_URL,
    reason="STATMECH_TEST_POSTGRES_URL is not set: no PostgreSQL server here "
    "(CI starts one with .ci/postgres.sh)",
)


@pytest.fixture
def problem_dir(workdir):
    synthetic_problem(layers=2, nodes=16, labels=6, samples=240, seed=1).save(workdir / "prob")
    return str(workdir / "prob")


def test_storage_urls(workdir):
    assert normalize_storage(None) == "journal:" + str(workdir / "mlruns" / "optuna.journal")
    assert normalize_storage("x/my.journal") == "journal:" + str(workdir / "x" / "my.journal")
    assert normalize_storage("sqlite:///o.db") == f"sqlite:///{workdir / 'o.db'}"
    assert normalize_storage("postgresql://u@h:5/db") == "postgresql://u@h:5/db"
    for bad in ("redis://localhost:6379", "http://server/optuna", "ftp://x"):
        with pytest.raises(StorageError, match="unsupported Optuna storage"):
            normalize_storage(bad)
    assert not (workdir / "mlruns").exists()


def test_the_mlflow_database_is_refused(workdir):
    import sqlite3

    db = workdir / "mlruns" / "mlflow.db"
    db.parent.mkdir()
    with sqlite3.connect(db) as con:  # the two tables that mark an MLflow tracking store
        con.execute("CREATE TABLE experiments (experiment_id INTEGER)")
        con.execute("CREATE TABLE runs (run_uuid TEXT)")
    before = db.read_bytes()
    with pytest.raises(StorageError, match="MLflow"):
        open_storage(f"sqlite:///{db}")
    with pytest.raises(StorageError, match="SQLite"):
        open_storage(str(db))
    assert db.read_bytes() == before


def test_theta_outside_unit_interval(problem_dir):
    problem = studies.load_problem(problem_dir)
    for bad in (0.0, 1.0, -0.2, 2.0):
        with pytest.raises(ThresholdError):
            problem.evaluate(bad)
    with pytest.raises(ThresholdError):
        problem.evaluate([0.3, 1.3])


def _front_is_pareto(rows, front):
    def dominates(a, b):
        return all(x >= y for x, y in zip(a, b, strict=True)) and a != b

    front_values = [tuple(r["values"]) for r in front]
    for f in front_values:
        assert not any(dominates(tuple(r["values"]), f) for r in rows)
    for r in rows:
        if tuple(r["values"]) not in front_values:
            assert any(dominates(f, tuple(r["values"])) for f in front_values)


@pytest.mark.slow  # 20 trials of a study, in two runs
def test_pareto_study_runs_and_resumes(problem_dir, workdir):
    out = workdir / "out"
    first = run_andc_study(problem_dir, n_trials=12, study_name="s", out_dir=out)
    assert first["added"] == 12 and first["complete_after"] == 12
    for name in ("pareto_front.json", "best_thresholds.json", "pareto.png", "trials.json"):
        assert (out / name).is_file()
    second = run_andc_study(problem_dir, n_trials=8, study_name="s", out_dir=out)
    assert second["complete_before"] == 12 and second["complete_after"] == 20
    study = optuna.load_study(study_name="s", storage=open_storage(None))
    assert len(optuna.get_all_study_names(open_storage(None))) == 1
    assert [t.number for t in study.trials] == list(range(20))
    assert all(t.state == TrialState.COMPLETE for t in study.trials)
    problem = studies.load_problem(problem_dir)
    for t in study.trials:
        expected = problem.evaluate(t.params["theta"])
        assert t.values == [expected["andc.accuracy"], expected["andc.pruned_fraction"]]
    rows = studies.trial_rows(study)
    _front_is_pareto(rows, second["front"])
    best = second["best"]
    assert best is not None and best["thresholds"]["theta"] > 0


def test_per_site_constrained_study(problem_dir, workdir):
    res = run_andc_study(
        problem_dir,
        objective=constrained_objective,
        objective_name="constrained",
        n_trials=15,
        per_site=True,
        delta=0.02,
        study_name="c",
        out_dir=workdir / "out",
    )
    study = optuna.load_study(study_name="c", storage=open_storage(None))
    problem = studies.load_problem(problem_dir)
    for t in study.trials:
        assert set(t.params) == {"theta.block0", "theta.block1"}
        drop = problem.evaluate([t.params["theta.block0"], t.params["theta.block1"]])[
            "andc.accuracy_drop"
        ]
        assert t.constraints == {"accuracy_drop": pytest.approx(drop - 0.02)}
    if res["best"] is not None:
        assert res["best"]["accuracy_drop"] <= 0.02 + 1e-12
        feasible = [t for t in study.trials if t.constraints["accuracy_drop"] <= 0]
        assert res["best"]["pruned_fraction"] == pytest.approx(max(t.values[0] for t in feasible))


def test_existing_study_with_other_settings_is_refused_untouched(problem_dir, workdir):
    run_andc_study(problem_dir, n_trials=3, study_name="s", out_dir=workdir / "out")
    journal = workdir / "mlruns" / "optuna.journal"
    before = journal.read_bytes()
    with pytest.raises(StudyMismatchError, match="directions"):
        run_andc_study(
            problem_dir,
            objective=constrained_objective,
            objective_name="constrained",
            n_trials=3,
            study_name="s",
        )
    with pytest.raises(StudyMismatchError, match="per_site"):
        run_andc_study(problem_dir, n_trials=3, study_name="s", per_site=True)
    with pytest.raises(StudyMismatchError, match="directions"):
        ensure_study(open_storage(None), StudySpec("s", ("minimize", "maximize")))
    assert journal.read_bytes() == before


def test_unknown_storage_scheme_touches_nothing(problem_dir, workdir):
    with pytest.raises(StorageError, match="redis"):
        run_andc_study(problem_dir, n_trials=3, storage="redis://localhost/0")
    assert not (workdir / "mlruns").exists()


def test_cli_rejects_an_unknown_storage_scheme_before_touching_anything(workdir, capsys):
    from statmech_nn.cli import main

    rc = main(["study", "andc", "some-run", "--storage", "redis://localhost/0"])
    assert rc == 2
    assert "unsupported Optuna storage" in capsys.readouterr().err
    assert not (workdir / "mlruns").exists()


@pytest.mark.slow  # a study over an SNP run logged to MLflow
def test_trials_logged_to_mlflow_under_the_study_run(problem_dir, workdir):
    from mlflow.tracking import MlflowClient

    from statmech_nn import tracking

    uri = tracking.init_store()
    client = MlflowClient(uri)
    parent = client.create_run(tracking.experiment_id("e"), run_name="snp").info.run_id
    res = run_andc_study(problem_dir, n_trials=6, study_name="m", snp_run_id=parent)
    study_run = client.get_run(res["study_run_id"])
    assert study_run.data.tags["mlflow.parentRunId"] == parent
    assert study_run.info.status == "FINISHED"
    arts = {a.path for a in client.list_artifacts(study_run.info.run_id, "study")}
    assert {"study/pareto.png", "study/pareto_front.json", "study/best_thresholds.json"} <= arts
    assert "andc.pruned_fraction" in study_run.data.metrics
    res2 = run_andc_study(problem_dir, n_trials=4, study_name="m", snp_run_id=parent)
    assert res2["study_run_id"] == res["study_run_id"]
    exp = study_run.info.experiment_id
    trials = client.search_runs(
        [exp], filter_string=f"tags.mlflow.parentRunId = '{res['study_run_id']}'"
    )
    study = optuna.load_study(study_name="m", storage=open_storage(None))
    assert sorted(int(r.data.tags["optuna.trial_number"]) for r in trials) == [
        t.number for t in study.trials
    ]
    by_number = {t.number: t for t in study.trials}
    for r in trials:
        t = by_number[int(r.data.tags["optuna.trial_number"])]
        assert float(r.data.params["theta"]) == pytest.approx(t.params["theta"])
        assert r.data.metrics["andc.accuracy"] == pytest.approx(t.values[0])
        assert r.data.metrics["andc.pruned_fraction"] == pytest.approx(t.values[1])


def _check_killed_study(study, res, marker, n_trials):
    trials = study.get_trials(deepcopy=False)
    assert [t.number for t in trials] == list(range(len(trials)))
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) >= n_trials
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    killed = int(Path(marker).read_text())
    assert trials[killed].state == TrialState.FAIL
    retries = [t for t in complete if t.system_attrs.get("failed_trial") == killed]
    assert len(retries) == 1 and retries[0].params == trials[killed].params
    assert killed in res["recovered_trials"]
    others = [t for t in trials if t.state == TrialState.FAIL and t.number != killed]
    assert not others


def _killed_worker_run(storage, workdir, heartbeat=None, n_trials=18):
    name = f"k-{uuid.uuid4().hex[:8]}"
    storage = normalize_storage(storage)
    ensure_study(open_storage(storage, heartbeat), StudySpec(name, OBJECTIVES["pareto"]))
    import _study_worker

    marker = str(workdir / "killed")
    objective = ProblemObjective(
        _study_worker.kill_once_objective, str(workdir / "prob"), {"marker": marker}
    )
    res = run_workers(storage, name, objective, n_trials, workers=3, heartbeat=heartbeat)
    assert res["killed_workers"] == 1
    study = optuna.load_study(study_name=name, storage=open_storage(storage, heartbeat))
    _check_killed_study(study, res, marker, n_trials)


@pytest.mark.slow
def test_three_journal_workers_one_killed(problem_dir, workdir):
    _killed_worker_run(None, workdir)


@needs_pg
@pytest.mark.postgres
@pytest.mark.slow
def test_three_postgres_workers_one_killed(problem_dir, workdir):
    _killed_worker_run(PG_URL, workdir, Heartbeat(interval=1, grace_period=3))


def _unsupervised_crash(storage, name, workdir, heartbeat):
    import _study_worker

    marker = workdir / "crashed"
    job = studies.WorkerJob(
        storage=storage,
        study_name=name,
        objective=ProblemObjective(
            _study_worker.always_kill_objective, str(workdir / "prob"), {"marker": str(marker)}
        ),
        target_complete=1,
        seed=0,
        token="crash",
        heartbeat=heartbeat,
    )
    proc = multiprocessing.get_context("spawn").Process(target=studies._worker_main, args=(job,))
    proc.start()
    proc.join(120)
    assert proc.exitcode == -9
    return int(marker.read_text())


@pytest.mark.slow
def test_journal_trial_of_a_dead_unsupervised_worker_is_recovered(problem_dir, workdir):
    storage = normalize_storage(None)
    ensure_study(open_storage(storage), StudySpec("u", OBJECTIVES["pareto"]))
    killed = _unsupervised_crash(storage, "u", workdir, Heartbeat())
    study = optuna.load_study(study_name="u", storage=open_storage(storage))
    assert study.trials[killed].state == TrialState.RUNNING
    objective = ProblemObjective(studies.pareto_objective, problem_dir)
    res = run_workers(storage, "u", objective, n_trials=5)
    assert res["recovered_trials"] == [killed]
    study = optuna.load_study(study_name="u", storage=open_storage(storage))
    assert study.trials[killed].state == TrialState.FAIL
    assert [t.system_attrs.get("failed_trial") for t in study.trials].count(killed) == 1
    assert len([t for t in study.trials if t.state == TrialState.COMPLETE]) == 5


@needs_pg
@pytest.mark.postgres
@pytest.mark.slow
def test_postgres_heartbeat_fails_and_retries_a_dead_workers_trial(problem_dir, workdir):
    name = f"h-{uuid.uuid4().hex[:8]}"
    hb = Heartbeat(interval=1, grace_period=2)
    ensure_study(open_storage(PG_URL, hb), StudySpec(name, OBJECTIVES["pareto"]))
    killed = _unsupervised_crash(PG_URL, name, workdir, hb)
    time.sleep(hb.grace_period + 1.5)
    job = studies.WorkerJob(
        storage=PG_URL,
        study_name=name,
        objective=ProblemObjective(studies.pareto_objective, problem_dir),
        target_complete=4,
        seed=1,
        token="survivor",
        heartbeat=hb,
    )
    studies.run_worker(job)  # no supervisor sweep: only Optuna's heartbeat can fail the trial
    study = optuna.load_study(study_name=name, storage=open_storage(PG_URL, hb))
    assert study.trials[killed].state == TrialState.FAIL
    retries = [t for t in study.trials if t.system_attrs.get("failed_trial") == killed]
    assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE


@pytest.mark.slow
def test_a_worker_that_raises_stops_the_run_with_a_clear_error(problem_dir, workdir):
    import _study_worker

    storage = normalize_storage(None)
    ensure_study(open_storage(storage), StudySpec("f", OBJECTIVES["constrained"]))
    objective = ProblemObjective(_study_worker.failing_objective, problem_dir)
    with pytest.raises(studies.WorkerError, match="exited with code 1"):
        run_workers(storage, "f", objective, n_trials=2, workers=2)
