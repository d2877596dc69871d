"""What MLflow's UI reads: experiments of kind custom model development, system metrics, commit."""

from __future__ import annotations

import os

import mlflow
import pytest

from statmech_nn import recipes, tracking
from statmech_nn.train import records, train

KIND = ("mlflow.experimentKind", "custom_model_development")


@pytest.mark.slow  # trains or runs a command end to end
def test_training_runs_log_system_metrics_and_the_commit_tag(workdir, monkeypatch):
    monkeypatch.delenv("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", raising=False)  # on by default
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.1")  # the user's wins
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLES_BEFORE_LOGGING", "1")
    config = recipes.config(
        "cpu-small", model="cct_2_3x2_32", dataset="digits", epochs=1, img_size=16,
        batch_size=32, limit_train=64, limit_eval=32, device="cpu", experiment="dash",
    )  # fmt: skip
    run = tracking.get_run(train(config))
    assert [k for k in run.data.metrics if k.startswith("system/")], run.data.metrics.keys()
    assert "MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING" not in os.environ  # only for the training run
    assert os.environ["MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL"] == "0.1"
    commit = records.git_commit()
    if commit is not None:
        assert run.data.tags["mlflow.source.git.commit"] == commit
    assert "git_commit" not in run.data.tags and "git_commit" not in run.data.params
    experiment = mlflow.get_experiment(run.info.experiment_id)
    assert experiment.tags.get(KIND[0]) == KIND[1]


def test_the_default_experiment_of_a_new_store_is_tagged_and_relocated(workdir):
    uri = tracking.init_store()
    default = mlflow.get_experiment("0")
    assert default.tags.get(KIND[0]) == KIND[1]
    assert default.artifact_location == tracking.artifact_root(uri) + "/0"
