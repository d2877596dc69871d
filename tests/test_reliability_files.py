"""Where analyses read data from, and who can read what the toolkit writes.

Issue 16 item 7: a stored config names ``data_root`` and ``download=True``; analyses ignore both
(data location and download permission come from the user: an argument or ``$STATMECH_DATA``).
Item 8: files respect the umask (0o644 under 022, 0o664 under 002), not ``mkstemp``'s 0o600.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from _tiny import SYNTHETIC, write_fake_cifar

from statmech_nn import cli, data, models, tracking
from statmech_nn.errors import DatasetNotFoundError

SNP_TINY = ["--sites", "mha", "--readout-epochs", "1", "--batch-size", "16", "--limit-train",
            "24", "--limit-eval", "12", "--device", "cpu", "--no-progress"]  # fmt: skip


def _training_run(config: dict, num_classes: int, img_size: int, epochs=(1,)) -> str:
    """A finished run with seeded untrained CCT checkpoints (at ``epochs``) holding ``config``."""
    with tracking.run("files", run_name="stored-config") as active:
        run_id = active.info.run_id
        for epoch in epochs:
            torch.manual_seed(epoch)
            model = models.create("cct_2_3x2_32", num_classes=num_classes, img_size=img_size)
            full = {**config, "model": "cct_2_3x2_32", "model_config": dict(model.config)}
            state = {"model": model.state_dict(), "model_config": dict(model.config),
                     "config": full}  # fmt: skip
            tracking.log_checkpoint(run_id, {**state, "epoch": epoch}, epoch)
    return run_id


def _refuse_downloads(monkeypatch, calls: list) -> None:
    """Record (and refuse) every torchvision CIFAR download; accept a fake copy's checksums."""
    import torchvision.datasets.cifar as cifar

    def refuse(url, root, *args, **kwargs):
        calls.append(root)
        raise OSError(f"test: no download of {url}")

    monkeypatch.setattr(cifar, "download_and_extract_archive", refuse)
    monkeypatch.setattr(cifar, "check_integrity", lambda path, md5=None: Path(path).is_file())


@pytest.fixture
def no_downloads(monkeypatch) -> list:
    """Every torchvision CIFAR download tried (each refused)."""
    calls: list = []
    _refuse_downloads(monkeypatch, calls)
    return calls


EVIL_CONFIG = {"dataset": "cifar10", "download": True, "img_size": 32, "seed": 0,
               "val_fraction": 0.1}  # fmt: skip
"""A CIFAR-10 config that also asks for a download into its ``data_root``."""


@pytest.fixture
def evil_run(workdir, monkeypatch) -> tuple[str, Path]:
    """A CIFAR-10 run whose stored config says data_root=<workdir>/elsewhere, download=True."""
    monkeypatch.delenv(data.DATA_ENV, raising=False)
    tracking.init_store()
    elsewhere = workdir / "elsewhere"
    config = {**EVIL_CONFIG, "data_root": str(elsewhere)}
    return _training_run(config, num_classes=10, img_size=32), elsewhere


@dataclass
class EvilStore:
    """A store with a CIFAR-10 run (checkpoints 0 and 1) whose config names another data root
    and a download, a fake CIFAR-10 copy in ``mine`` and an SNP run of it computed from there."""

    root: Path
    run_id: str
    snp_id: str
    elsewhere: Path
    mine: Path
    downloads: list


@pytest.fixture(scope="module")
def evil_store(tmp_path_factory) -> Iterator[EvilStore]:
    from statmech_nn import snp

    root = tmp_path_factory.mktemp("evil")
    downloads: list = []
    mine = root / "mine"
    write_fake_cifar(mine, "cifar10", n_train=60, n_test=20)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.delenv(data.DATA_ENV, raising=False)
        _refuse_downloads(mp, downloads)
        tracking.init_store()
        config = {**EVIL_CONFIG, "data_root": str(root / "elsewhere")}
        run_id = _training_run(config, num_classes=10, img_size=32, epochs=(0, 1))
        snp_id, _ = snp.compute_for_run(run_id, data_root=mine, **SNP_LIBRARY)
    tracking.use_store()
    yield EvilStore(root, run_id, snp_id, root / "elsewhere", mine, downloads)


@pytest.fixture
def in_evil_store(evil_store, monkeypatch) -> Iterator[EvilStore]:
    """The evil store as the working directory, downloads refused, ``$STATMECH_DATA`` unset."""
    monkeypatch.chdir(evil_store.root)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv(data.DATA_ENV, raising=False)
    _refuse_downloads(monkeypatch, evil_store.downloads)
    yield evil_store
    tracking.use_store()


SNP_LIBRARY = dict(sites="mha,ff,ff_hidden", readout_epochs=1, batch_size=16, limit_train=24,
                   limit_eval=12, device="cpu", progress=False)  # fmt: skip
"""The tiny SNP run of the evil store, as :func:`statmech_nn.snp.compute_for_run` arguments."""

ANALYSES = {
    "snp": ["snp", "{run}", *SNP_TINY],
    "scaling": ["scaling", "{run}", "--labels", "2,3", "--readout-epochs", "0", "--device", "cpu"],
    "order --over-checkpoints": [
        "order",
        "{snp}",
        "--over-checkpoints",
        "--null-permutations",
        "10",
        "--device",
        "cpu",
    ],  # fmt: skip
    "prune": [
        "prune",
        "{run}",
        "--snp-run",
        "{snp}",
        "--epochs",
        "0",
        "--random-draws",
        "0",
        "--device",
        "cpu",
    ],  # fmt: skip
    "study andc": ["study", "andc", "{snp}", "--trials", "2", "--device", "cpu"],
    "cooperation": ["cooperation", "{snp}", "--kind", "ff", "--draws", "1", "--device", "cpu"],
}
"""Every analysis that reads a run's data, as its command line."""


def _one_line_error(argv: list[str], capsys) -> str:
    code = cli.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    return err[0]


@pytest.mark.slow  # the SNP run of the module's store
@pytest.mark.parametrize("command", list(ANALYSES))
def test_analyses_ignore_the_data_root_and_download_of_a_stored_config(
    in_evil_store, capsys, command
):
    store = in_evil_store
    argv = [a.format(run=store.run_id, snp=store.snp_id) for a in ANALYSES[command]]
    line = _one_line_error(argv, capsys)
    assert "cifar10 not found: expected data/cifar-10-batches-py" in line, line  # ./data
    assert store.downloads == []
    assert not store.elsewhere.exists()


@pytest.mark.slow  # the SNP run of the module's store
@pytest.mark.parametrize("command", list(ANALYSES))
def test_analyses_read_the_data_root_given_on_their_command_line(in_evil_store, capsys, command):
    store = in_evil_store
    given = store.root / "given"
    argv = [a.format(run=store.run_id, snp=store.snp_id) for a in ANALYSES[command]]
    line = _one_line_error([*argv, "--data-root", str(given)], capsys)
    assert f"cifar10 not found: expected {given}/cifar-10-batches-py" in line, line
    assert store.downloads == [] and not store.elsewhere.exists() and not given.exists()


@pytest.mark.slow  # an SNP run and an order analysis over two checkpoints
def test_snp_and_order_run_on_the_data_of_their_data_root(in_evil_store, capsys, child_runs):
    store = in_evil_store
    argv = ["snp", store.run_id, *SNP_TINY, "--data-root", str(store.mine)]
    assert cli.main(argv) == 0
    snp_id = capsys.readouterr().out.strip().splitlines()[-1]
    assert snp_id != store.snp_id
    argv = ["order", snp_id, "--over-checkpoints", "--null-permutations", "10", "--device", "cpu"]
    assert cli.main([*argv, "--data-root", str(store.mine)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("epoch 0: ") and "epoch 1: " in out  # epoch 0 computed from mine
    assert store.downloads == [] and not store.elsewhere.exists()
    assert not (store.root / "data").exists()


@pytest.mark.slow  # imports a model, then its SNP run
def test_snp_of_a_model_trained_elsewhere_uses_its_data_root(in_evil_store, capsys):
    """``snp --model M --weights W --dataset D --data-root R``: both steps read R."""
    store = in_evil_store
    torch.manual_seed(0)
    model = models.create("cct_2_3x2_32", num_classes=10, img_size=32)
    weights = store.root / "weights.pt"
    torch.save(model.state_dict(), weights)
    argv = ["snp", "--model", "cct_2_3x2_32", "--weights", str(weights), "--dataset", "cifar10",
            "--data-root", str(store.mine), *SNP_TINY]  # fmt: skip
    assert cli.main(argv) == 0, capsys.readouterr().err
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("model run ") and len(lines[-1]) == 32
    assert not (store.root / "data").exists()


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


class _Called(Exception):
    """Raised by a stand-in analysis after recording its ``data_root``."""


def test_demo_and_findings_steps_name_and_pass_their_data_root(monkeypatch):
    """Every analysis step of the demo and the findings prints ``--data-root`` and reads there."""
    import statmech_nn.cooperation_run
    import statmech_nn.pruning
    from statmech_nn import demo, demo_commands, findings, order, scaling, snp, studies
    from statmech_nn.findings_collect import findings_argv

    root = "/somewhere/datasets"
    s = demo.plan("cifar100", data_root=root, device="cpu")
    f = findings.plan("gpu", dataset="cifar100", data_root=root, device="cpu")
    printed = [
        demo_commands.train_argv(s),
        demo_commands.snp_argv(s, "RUN"),
        demo_commands.order_argv(s, "SNP"),
        demo_commands.study_argv(s, "SNP"),
        demo_commands.cooperation_argv(s, "SNP"),
        findings.prune_argv(f, "RUN", "SNP"),
        findings.scaling_argv(f, "RUN"),
        findings_argv(f, "RUN"),
    ]
    parser = cli.build_parser()
    assert [parser.parse_args(argv).data_root for argv in printed] == [root] * len(printed)

    seen: dict[str, object] = {}

    def stand_in(name: str):
        def record(*args, **kwargs):
            seen[name] = kwargs.get("data_root")
            raise _Called

        return record

    for module, name in ((snp, "compute_for_run"), (order, "for_run"), (studies, "for_run"),
                         (statmech_nn.cooperation_run, "for_run"), (scaling, "for_run"),
                         (statmech_nn.pruning, "prune_network")):  # fmt: skip
        monkeypatch.setattr(module, name, stand_in(f"{module.__name__}.{name}"))
    steps = [
        lambda: demo.snp_step(s, "RUN", print),
        lambda: demo.order_step(s, "SNP", print),
        lambda: demo.study_step(s, "SNP", print),
        lambda: demo.cooperation_work(s, "SNP", print),
        lambda: findings.prune_step(f, "RUN", "SNP", print),
        lambda: findings.scaling_step(f, "RUN", print),
    ]
    for step in steps:
        with pytest.raises(_Called):
            step()
    assert len(seen) == len(steps) and set(seen.values()) == {root}
