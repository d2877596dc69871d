"""Study names and objective names: one naming rule, named objectives, created/resumed lines."""

from __future__ import annotations

import logging

import optuna
import pytest

from statmech_nn.studies import (
    StudySpec,
    andc_study_name,
    default_study_name,
    ensure_study,
    open_storage,
    run_andc_study,
    synthetic_problem,
)
from statmech_nn.studies.mlflow_runs import trial_metrics
from statmech_nn.studies.objectives import METRIC_NAMES, OBJECTIVES


@pytest.fixture
def problem_dir(workdir):
    synthetic_problem(layers=2, nodes=16, labels=6, samples=120, seed=1).save(workdir / "prob")
    return str(workdir / "prob")


def test_every_objective_has_one_name_per_direction():
    assert METRIC_NAMES.keys() == OBJECTIVES.keys()
    for objective, directions in OBJECTIVES.items():
        assert len(METRIC_NAMES[objective]) == len(directions)


def test_the_default_name_is_the_one_rule(problem_dir):
    from statmech_nn.studies import load_problem

    problem = load_problem(problem_dir)
    run_id = str(problem.meta.get("snp_run_id") or "local")
    assert default_study_name(problem, "pareto", False) == andc_study_name(
        run_id, problem.kind, "pareto"
    )
    assert andc_study_name("0123456789abcdef", "ff", "pareto") == "andc-pareto-ff-01234567"
    assert andc_study_name("0123456789", "mha", "constrained", per_site=True).endswith("-per-site")


def test_created_and_resumed_are_logged_and_objectives_named(workdir, caplog):
    storage = open_storage(None)
    spec = StudySpec("s", ("maximize", "maximize"), {"kind": "ff"}, ("acc", "pruned"))
    with caplog.at_level(logging.INFO, logger="statmech_nn"):
        study = ensure_study(storage, spec, "journal:" + str(workdir / "mlruns/optuna.journal"))
        study.add_trial(optuna.trial.create_trial(values=[0.5, 0.25]))
        again = ensure_study(storage, spec)
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("statmech_nn")]
    assert lines == [
        f"created study s in {workdir / 'mlruns' / 'optuna.journal'}",
        "resumed study s (1 trials)",
    ]
    assert again.metric_names == ["acc", "pruned"]
    assert trial_metrics(again.trials[0], again.metric_names) == {"acc": 0.5, "pruned": 0.25}


def test_an_unnamed_study_gets_its_names_on_resume(workdir):
    storage = open_storage(None)
    optuna.create_study(storage=storage, study_name="old", directions=["maximize"])
    study = ensure_study(storage, StudySpec("old", ("maximize",), {}, ("andc.pruned_fraction",)))
    assert study.metric_names == ["andc.pruned_fraction"]


@pytest.mark.slow  # trains or runs a command end to end
def test_trial_runs_carry_the_objective_names(problem_dir, workdir):
    from mlflow.tracking import MlflowClient

    from statmech_nn import tracking

    uri = tracking.init_store()
    client = MlflowClient(uri)
    parent = client.create_run(tracking.experiment_id("e"), run_name="snp").info.run_id
    res = run_andc_study(problem_dir, n_trials=3, study_name="n", snp_run_id=parent,
                         sampler="random")  # fmt: skip
    study = optuna.load_study(study_name="n", storage=open_storage(None))
    assert study.metric_names == list(METRIC_NAMES["pareto"])
    trials = client.search_runs(
        [client.get_run(parent).info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{res['study_run_id']}'",
    )
    assert len(trials) == 3
    by_number = {t.number: t for t in study.trials}
    for run in trials:
        trial = by_number[int(run.data.tags["optuna.trial_number"])]
        assert not [k for k in run.data.metrics if k.startswith("objective.")]
        for name, value in zip(study.metric_names, trial.values, strict=True):
            assert run.data.metrics[name] == pytest.approx(value)
