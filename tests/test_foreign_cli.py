"""``statmech-nn snp --model NAME --weights FILE``: a model trained elsewhere, then ``order``."""

from __future__ import annotations

import hashlib

import pytest

needs_timm = pytest.mark.requires("timm")
needs_hf = pytest.mark.requires("transformers")


def _runs(filter_string: str):
    import mlflow

    return mlflow.search_runs(
        search_all_experiments=True, filter_string=filter_string, output_format="list"
    )


def _library_weights(name: str, tmp_path, num_classes: int = 10):
    """A model of ``name`` with the library's own random init, saved as safetensors (no prefix)."""
    import torch
    from safetensors.torch import save_file

    from statmech_nn import models

    torch.manual_seed(3)
    net = models.create(name, num_classes=num_classes, img_size=8).net
    path = tmp_path / "elsewhere.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    return net, path


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("timm:vit-tiny-digits", marks=needs_timm),
        pytest.param("hf:vit-tiny-digits", marks=[pytest.mark.slow, needs_hf]),
    ],
)
def test_snp_and_order_of_a_model_trained_elsewhere(name, workdir, tmp_path, capsys):
    import torch

    from statmech_nn import cli, tracking

    net, path = _library_weights(name, tmp_path)
    args = ["snp", "--model", name, "--weights", str(path), "--dataset", "digits"]
    args += ["--img-size", "8", "--sites", "block1.mha,block1.ff", "--readout-epochs", "1"]
    args += ["--limit-train", "120", "--limit-eval", "60", "--device", "cpu", "--no-progress"]
    assert cli.main(args) == 0, capsys.readouterr().err
    lines = capsys.readouterr().out.strip().splitlines()
    model_run = lines[0].removeprefix("model run ")
    snp_run = lines[-1]
    (run,) = _runs(f"attributes.run_id = '{model_run}'")
    assert run.data.params["model"] == name
    assert run.data.params["weights"] == str(path)
    assert run.data.params["weights_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert run.data.tags["statmech_nn.source"] == "foreign"
    (child,) = _runs(f"tags.mlflow.parentRunId = '{model_run}' and tags.`statmech_nn.kind` = 'snp'")
    assert child.info.run_id == snp_run
    # the run's checkpoint is the given weights, exactly
    loaded = tracking.load_checkpoint(model_run)
    for key, value in net.state_dict().items():
        assert torch.equal(loaded.model.state_dict()["net." + key], value)
    assert cli.main(["order", model_run, "--null-permutations", "10"]) == 0
    metrics = _runs(f"tags.mlflow.parentRunId = '{model_run}' and attributes.run_name = 'order'")
    assert 0.0 <= metrics[0].data.metrics["order.Q.block1"] <= 1.0


@pytest.mark.slow  # an SNP pass and a 2-trial ANDC study
@needs_timm
def test_study_on_a_model_trained_elsewhere(workdir, tmp_path, capsys):
    """``study andc MODEL_RUN`` takes the model run like a training run: its newest SNP run."""
    from statmech_nn import cli

    _, path = _library_weights("timm:vit-tiny-digits", tmp_path)
    args = ["snp", "--model", "timm:vit-tiny-digits", "--weights", str(path)]
    args += ["--dataset", "digits", "--img-size", "8", "--sites", "block1.mha,block1.ff"]
    args += ["--readout-epochs", "1", "--limit-train", "120", "--limit-eval", "60"]
    assert cli.main([*args, "--device", "cpu", "--no-progress"]) == 0, capsys.readouterr().err
    lines = capsys.readouterr().out.strip().splitlines()
    model_run, snp_run = lines[0].removeprefix("model run "), lines[-1]
    assert cli.main(["study", "andc", model_run, "--trials", "2"]) == 0, capsys.readouterr().err
    study_run = capsys.readouterr().out.strip().splitlines()[-1]
    (study,) = _runs(f"attributes.run_id = '{study_run}'")
    assert study.info.run_name == "study"
    assert study.data.tags["mlflow.parentRunId"] == snp_run
    (snp,) = _runs(f"attributes.run_id = '{snp_run}'")
    assert snp.data.tags["mlflow.parentRunId"] == model_run
    trials = _runs(f"tags.mlflow.parentRunId = '{study_run}'")
    assert len([t for t in trials if t.info.status == "FINISHED"]) == 2


@needs_hf
def test_a_local_hugging_face_directory_is_a_model_too(workdir, tmp_path, capsys):
    from statmech_nn import cli, models

    net = models.create("hf:vit-tiny-digits", num_classes=10, img_size=8).net
    net.save_pretrained(str(tmp_path / "hfdir"))
    args = ["snp", "--model", f"hf:{tmp_path / 'hfdir'}", "--dataset", "digits"]
    args += ["--sites", "block0.mha", "--readout-epochs", "1", "--limit-train", "60"]
    args += ["--limit-eval", "30", "--device", "cpu", "--no-progress"]
    assert cli.main(args) == 0, capsys.readouterr().err
    model_run = capsys.readouterr().out.splitlines()[0].removeprefix("model run ")
    (run,) = _runs(f"attributes.run_id = '{model_run}'")
    assert run.data.params["model"] == f"hf:{tmp_path / 'hfdir'}"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["RUNID", "--model", "hf:bert-tiny"], "not both"),
        ([], "RUN_ID, or --model"),
        (["--model", "hf:vit-tiny-digits"], "--dataset"),
        pytest.param(
            ["--model", "hf:vit-tiny-digits", "--weights", "nope.pt", "--dataset", "digits"],
            "nope",
            marks=needs_hf,  # without transformers the error is the install hint
        ),
    ],
)
def test_bad_foreign_arguments_are_one_line_errors(extra, message, workdir, capsys):
    from statmech_nn import cli

    assert cli.main(["snp", *extra, "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
