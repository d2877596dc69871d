"""Where analyses read data from, and who can read what the toolkit writes.

Issue 16 item 7: a stored config names ``data_root`` and ``download=True``; analyses ignore both
(data location and download permission come from the user: an argument or ``$STATMECH_DATA``).
Item 8: files respect the umask (0o644 under 022, 0o664 under 002), not ``mkstemp``'s 0o600.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import torch
from _tiny import SYNTHETIC

from statmech_nn import cli, data, models, tracking
from statmech_nn.errors import DatasetNotFoundError

SNP_TINY = ["--sites", "mha", "--readout-epochs", "1", "--batch-size", "16", "--limit-train",
            "24", "--limit-eval", "12", "--device", "cpu", "--no-progress"]  # fmt: skip


def _training_run(config: dict, num_classes: int, img_size: int) -> str:
    """A finished run with a seeded untrained CCT checkpoint at epoch 1 holding ``config``."""
    with tracking.run("files", run_name="stored-config") as active:
        run_id = active.info.run_id
        torch.manual_seed(0)
        model = models.create("cct_2_3x2_32", num_classes=num_classes, img_size=img_size)
        full = {**config, "model": "cct_2_3x2_32", "model_config": dict(model.config)}
        state = {"model": model.state_dict(), "model_config": dict(model.config), "config": full}
        tracking.log_checkpoint(run_id, {**state, "epoch": 1}, 1)
    return run_id


@pytest.fixture
def no_downloads(monkeypatch) -> list:
    """Record (and refuse) every torchvision CIFAR download."""
    import torchvision.datasets.cifar as cifar

    calls: list = []

    def refuse(url, root, *args, **kwargs):
        calls.append(root)
        raise OSError(f"test: no download of {url}")

    monkeypatch.setattr(cifar, "download_and_extract_archive", refuse)
    return calls


@pytest.fixture
def evil_run(workdir, monkeypatch) -> tuple[str, Path]:
    """A CIFAR-10 run whose stored config says data_root=<workdir>/elsewhere, download=True."""
    monkeypatch.delenv(data.DATA_ENV, raising=False)
    tracking.init_store()
    elsewhere = workdir / "elsewhere"
    config = {"dataset": "cifar10", "data_root": str(elsewhere), "download": True,
              "img_size": 32, "seed": 0, "val_fraction": 0.1}  # fmt: skip
    return _training_run(config, num_classes=10, img_size=32), elsewhere


ANALYSES = {
    "snp": ["snp", "{run}", *SNP_TINY],
    "scaling": ["scaling", "{run}", "--labels", "2,3", "--readout-epochs", "0", "--device", "cpu"],
}


@pytest.mark.parametrize("command", list(ANALYSES))
def test_analyses_ignore_the_data_root_and_download_of_a_stored_config(
    workdir, evil_run, no_downloads, capsys, command
):
    run_id, elsewhere = evil_run
    argv = [a.format(run=run_id) for a in ANALYSES[command]]
    code = cli.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert "cifar10 not found: expected data/cifar-10-batches-py" in err[0], err[0]  # ./data
    assert no_downloads == []
    assert not elsewhere.exists()


def test_analyses_take_the_data_root_from_the_environment_or_the_caller(
    workdir, evil_run, no_downloads, monkeypatch
):
    run_id, elsewhere = evil_run
    config = tracking.load_checkpoint(run_id).config
    mine = workdir / "mine"
    monkeypatch.setenv(data.DATA_ENV, str(mine))
    with pytest.raises(DatasetNotFoundError, match=str(mine)):
        data.data_for_analysis(config)
    given = workdir / "given"
    with pytest.raises(DatasetNotFoundError, match=str(given)):
        data.data_for_analysis(config, data_root=given)
    assert no_downloads == [] and not elsewhere.exists() and not mine.exists()


def test_training_still_follows_its_own_config(workdir, evil_run, no_downloads):
    """``data_for_config`` (training, resume) keeps the run's own root and download choice."""
    run_id, elsewhere = evil_run
    with pytest.raises(DatasetNotFoundError, match="could not download"):
        data.data_for_config(tracking.load_checkpoint(run_id).config)
    assert [str(root) for root in no_downloads] == [str(elsewhere)]


def test_pruning_and_order_over_checkpoints_ignore_them_too(workdir, evil_run, no_downloads):
    from statmech_nn.order.checkpoints import checkpoint_data
    from statmech_nn.pruning.run import data_for

    run_id, elsewhere = evil_run
    expected = "expected data/cifar-10-batches-py"  # ./data
    with pytest.raises(DatasetNotFoundError, match=expected):
        data_for(tracking.load_checkpoint(run_id).config)
    with pytest.raises(DatasetNotFoundError, match=expected):
        checkpoint_data(run_id, {"split": "test", "seed": 0}, [1])
    assert no_downloads == [] and not elsewhere.exists()


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("umask", [0o022, 0o002], ids=["022", "002"])
@pytest.mark.slow  # trains or runs a command end to end
def test_written_files_respect_the_umask(workdir, monkeypatch, umask):
    monkeypatch.setenv("STATMECH_CACHE", str(workdir / "cache"))
    wanted = 0o666 & ~umask
    before = os.umask(umask)
    try:
        (workdir / "first").mkdir()
        monkeypatch.chdir(workdir / "first")
        tracking.init_store()  # migrates and keeps a template in the cache
        (workdir / "second").mkdir()
        monkeypatch.chdir(workdir / "second")
        tracking.init_store()  # a copy of the template
        db = workdir / "second" / "mlruns" / "mlflow.db"
        assert _mode(db) == wanted
        run_id = _training_run(SYNTHETIC, num_classes=6, img_size=16)
        folder = tracking.local_artifact_dir(run_id) / tracking.CHECKPOINT_DIR
        assert _mode(folder / "epoch_0001.pt") == wanted
        assert _mode(folder / tracking.CONFIG_NAME) == wanted
        assert cli.main(["snp", run_id, *SNP_TINY]) == 0
        snp_files = list((workdir / "second" / "mlruns" / "artifacts").rglob("snp.nc"))
        assert len(snp_files) == 1 and _mode(snp_files[0]) == wanted
        readouts = list(snp_files[0].parent.iterdir())
        assert len(readouts) == 3 and {_mode(p) for p in readouts} == {wanted}
    finally:
        os.umask(before)
        tracking.use_store()
