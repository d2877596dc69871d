"""Every user mistake is one line: exit 2, one stderr line, no traceback, nothing written.

Table-driven over the bad inputs of issues 10 (item 6) and 16 (item 5 and its "Also" list). Each
case runs ``statmech-nn`` in-process against a shared store and checks that no MLflow run, no
Optuna study and no file appeared or changed.
"""

from __future__ import annotations

import errno
import os
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import optuna
import pytest
import torch
from _tiny import subprocess_env

from statmech_nn import cli, tracking

SNP_TINY = ["--sites", "mha,ff", "--readout-epochs", "1", "--batch-size", "32",
            "--limit-train", "48", "--limit-eval", "24", "--device", "cpu",
            "--no-progress"]  # fmt: skip
TRAIN_TINY = ["train", "--model", "cct_2_3x2_32", "--dataset", "digits", "--img-size", "16",
              "--epochs", "1", "--batch-size", "32", "--limit-train", "32",
              "--limit-eval", "16", "--device", "cpu"]  # fmt: skip


@dataclass
class Store:
    root: Path
    train_id: str
    snp_id: str
    bad_train_id: str
    bad_snp_id: str


def _snp(train_id: str) -> str:
    from statmech_nn import snp

    assert cli.main(["snp", train_id, *SNP_TINY]) == 0
    return snp.load_from_run(train_id).attrs["mlflow_run_id"]


@pytest.fixture(scope="module")
def store(tmp_path_factory, fake_training_run) -> Store:
    root = tmp_path_factory.mktemp("errors")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        tracking.init_store()
        train_id = fake_training_run((0, 1), seed=0, experiment="errors", run_name="good")
        snp_id = _snp(train_id)
        assert cli.main(["study", "andc", snp_id, "--trials", "2", "--study-name", "existing"]) == 0
        bad_train_id = fake_training_run(
            (0, 1), seed=0, experiment="errors", run_name="bad-epoch-0"
        )
        bad_snp_id = _snp(bad_train_id)
        old = tracking.checkpoint_path(bad_train_id, 0)
        old.write_bytes(old.read_bytes()[: old.stat().st_size // 2])
        yield Store(root, train_id, snp_id, bad_train_id, bad_snp_id)


@pytest.fixture
def in_store(store, monkeypatch):
    """The store, as the working directory; mlflow back on its default store afterwards."""
    monkeypatch.chdir(store.root)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    yield store
    tracking.use_store()


def _studies(root: Path) -> list[str]:
    journal = root / "mlruns" / "optuna.journal"
    if not journal.exists():
        return []
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    storage = JournalStorage(JournalFileBackend(str(journal)))
    return sorted(s.study_name for s in optuna.get_all_study_summaries(storage))


STUDY = ["study", "andc", "{snp}", "--trials", "2"]
# name: (argv, a piece of the one error line, marks)
CASES: dict[str, tuple[list[str], str, list]] = {
    "snp --chunk-size 0": (["snp", "{train}", *SNP_TINY, "--chunk-size", "0"],
                           "--chunk-size must be >= 1", []),
    "snp --readout-epochs -1": (["snp", "{train}", *SNP_TINY, "--readout-epochs", "-1"],
                                "--readout-epochs must be >= 1", []),
    "snp --readout-epochs 0": (["snp", "{train}", *SNP_TINY, "--readout-epochs", "0"],
                               "--readout-epochs must be >= 1", []),
    "snp --limit-eval 0": (["snp", "{train}", *SNP_TINY, "--limit-eval", "0"],
                           "--limit-eval must be >= 1", []),
    "scaling --readout-epochs -2": (["scaling", "{train}", "--labels", "2,3",
                                     "--readout-epochs", "-2"], "--readout-epochs must be >= 0",
                                    []),
    "scaling --draws 0": (["scaling", "{train}", "--labels", "2,3", "--draws", "0"],
                          "--draws must be >= 1", []),
    "order --over-checkpoints over a truncated old checkpoint": (
        ["order", "{bad_snp}", "--over-checkpoints", "--device", "cpu"],
        "corrupt or truncated", []),
    "order --null-permutations 0": (["order", "{snp}", "--null-permutations", "0"],
                                    "--null-permutations must be >= 1", []),
    "study with a mismatched --variant": ([*STUDY, "--study-name", "existing", "--variant",
                                           "cluster"], "variant='diagonal'", []),
    "study --storage sqlite://": ([*STUDY, "--storage", "sqlite://"], "names no database file",
                                  []),
    "study name with a quote": ([*STUDY, "--study-name", "it's"], "cannot be used", []),
    "study --workers -1": ([*STUDY, "--workers", "-1"], "--workers must be at least 1", []),
    "study --layers x": ([*STUDY, "--layers", "x"], "--layers must be", []),
    "prune --epochs -1": (["prune", "{train}", "--epochs", "-1"], "--epochs must be >= 0", []),
    "train --model-option embedding_dim=-4": ([*TRAIN_TINY, "--model-option", "embedding_dim=-4"],
                                              "embedding_dim must be a positive integer", []),
    "train --model-option num_heads=5 (embedding 128)": (
        [*TRAIN_TINY, "--model-option", "num_heads=5"], "not divisible by num_heads 5", []),
    "demo --epochs 0": (["demo", "--epochs", "0"], "--epochs must be >= 1", []),
    "train --epochs 0": ([*TRAIN_TINY, "--epochs", "0"], "epochs", []),
    "train --epochs -1": ([*TRAIN_TINY, "--epochs", "-1"], "epochs", []),
    "train --lr nan": ([*TRAIN_TINY, "--lr", "nan"], "lr", []),
    "train --batch-size 0": ([*TRAIN_TINY, "--batch-size", "0"], "batch", []),
    "train --label-smoothing 2": ([*TRAIN_TINY, "--label-smoothing", "2"], "smoothing",
                                  []),
    "train --workers -1": ([*TRAIN_TINY, "--workers", "-1"], "workers", []),
    "train --device cuda without a GPU": (
        [*TRAIN_TINY, "--device", "cuda"], "cuda",
        [pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")]),
}  # fmt: skip


def _argv(store: Store, argv: list[str]) -> list[str]:
    ids = {"train": store.train_id, "snp": store.snp_id, "bad_snp": store.bad_snp_id}
    return [a.format(**ids) for a in argv]


def _unchanged(store: Store, check, all_runs, snapshot):
    runs, studies, files = all_runs(), _studies(store.root), snapshot(store.root)
    check()
    assert all_runs() == runs
    assert _studies(store.root) == studies
    assert snapshot(store.root) == files


@pytest.mark.slow  # the shared store trains SNP readouts and runs a short study first
@pytest.mark.parametrize(
    "case", [pytest.param(name, id=name, marks=marks) for name, (_, _, marks) in CASES.items()]
)
def test_bad_input_is_one_line_and_writes_nothing(
    in_store, capsys, case, one_line_error, all_runs, snapshot
):
    store = in_store
    argv, message, _ = CASES[case]
    argv = _argv(store, argv)
    _unchanged(store, lambda: one_line_error(argv, capsys, message), all_runs, snapshot)


def _raise(exc: BaseException):
    def fail(*args, **kwargs):
        raise exc

    return fail


def _wrapped_readonly() -> Exception:
    from mlflow.exceptions import MlflowException

    try:
        try:
            raise sqlite3.OperationalError("attempt to write a readonly database")
        except sqlite3.OperationalError as inner:
            raise MlflowException(f"(sqlite3.OperationalError) {inner}") from inner
    except MlflowException as outer:
        return outer


OS_ERRORS = {
    "permission denied": (lambda root: PermissionError(errno.EACCES, "Permission denied",
                                                       str(root / "mlruns" / "mlflow.db")),
                          "permission denied: {root}/mlruns/mlflow.db"),
    "disk full": (lambda root: OSError(errno.ENOSPC, "No space left on device",
                                       str(root / "mlruns" / "artifacts")),
                  "no space left on device: {root}/mlruns/artifacts"),
    "read-only file system": (lambda root: OSError(errno.EROFS, "Read-only file system",
                                                   str(root / "mlruns")),
                              "read-only file system: {root}/mlruns"),
    "SQLite read-only under MLflow": (lambda root: _wrapped_readonly(),
                                      "cannot be written (readonly database)"),
}  # fmt: skip


ANY_RUN = "0123456789abcdef0123456789abcdef"


@pytest.mark.parametrize("case", list(OS_ERRORS))
def test_os_errors_are_one_line_naming_the_path(workdir, capsys, monkeypatch, case, one_line_error):
    make, message = OS_ERRORS[case]
    monkeypatch.setattr(tracking, "init_store", _raise(make(workdir)))
    one_line_error(["order", ANY_RUN], capsys, message.format(root=workdir))


def test_a_bug_still_shows_its_traceback(workdir, monkeypatch):
    monkeypatch.setattr(tracking, "init_store", _raise(OSError(errno.EIO, "I/O error")))
    with pytest.raises(OSError, match="I/O error"):
        cli.main(["order", ANY_RUN])


def _cli_env() -> dict[str, str]:
    """A fresh ``statmech-nn``'s environment: this checkout, no MLflow settings, no warnings."""
    return {
        **subprocess_env(drop=lambda name: name.startswith("MLFLOW_")),
        "PYTHONWARNINGS": "ignore",
    }


def _without_root_override() -> list[str] | None:
    """A command prefix under which even root obeys file modes (``setpriv`` dropping the
    capabilities that override them), ``[]`` for other users, ``None`` if root cannot drop it."""
    if os.geteuid() != 0:
        return []
    prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"]
    try:
        probe = subprocess.run([*prefix, "true"], capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return prefix if probe.returncode == 0 else None


@pytest.mark.slow  # a fresh interpreter imports torch and mlflow
def test_read_only_mlruns_is_one_line(in_store):
    """``./mlruns`` without write permission: exit 2, one line naming it (also run as root)."""
    prefix = _without_root_override()
    if prefix is None:
        pytest.skip("root here cannot drop the capability to write into read-only folders")
    mlruns = in_store.root / "mlruns"
    modes = {p: p.stat().st_mode for p in [mlruns, *mlruns.rglob("*")]}
    env = {
        **subprocess_env(drop=lambda name: name.startswith("MLFLOW_")),
        "PYTHONWARNINGS": "ignore",
    }
    try:
        for p in modes:
            p.chmod(modes[p] & ~0o222)
        done = subprocess.run(
            [*prefix, sys.executable, "-m", "statmech_nn", *_argv(in_store, ["order", "{snp}"])],
            cwd=in_store.root, env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
    finally:
        for p, mode in modes.items():
            p.chmod(mode)
    assert done.returncode == 2, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "mlruns" in done.stderr and "Traceback" not in done.stderr
    assert {p: p.stat().st_mode for p in modes} == modes


@pytest.mark.slow  # a fresh interpreter imports torch and mlflow
def test_the_installed_command_exits_2_with_one_line(workdir):
    env = {
        **subprocess_env(drop=lambda name: name.startswith("MLFLOW_")),
        "PYTHONWARNINGS": "ignore",
    }
    argv = ["study", "andc", ANY_RUN, "--storage", "sqlite://"]
    done = subprocess.run(
        [sys.executable, "-m", "statmech_nn", *argv],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        f"statmech-nn study: error: {done.stderr.split('error: ', 1)[1].strip()}"
    ]
    assert "names no database file" in done.stderr
    assert not (workdir / "mlruns").exists()


def test_the_case_table_covers_the_issue_list():
    wanted = ["--chunk-size 0", "--readout-epochs -1", "--readout-epochs 0", "--draws 0",
              "over-checkpoints", "--variant", "sqlite://", "quote", "--workers -1",
              "embedding_dim=-4", "num_heads=5", "--epochs 0", "--lr nan", "--batch-size 0",
              "--label-smoothing 2", "--device cuda"]  # fmt: skip
    for piece in wanted:
        assert any(piece in name for name in CASES), piece


@pytest.mark.slow  # trains or runs a command end to end
def test_a_full_disk_while_writing_a_checkpoint_is_one_line_naming_the_file(
    workdir, capsys, monkeypatch
):
    """ENOSPC from a real write call (no file name on the error): the line names the file."""
    original = torch.save

    def fill_the_disk(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", fill_the_disk)
    code = cli.main(TRAIN_TINY)
    monkeypatch.setattr(torch, "save", original)
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2 and len(lines) == 1, captured.err
    (run,) = tracking.uris.client().search_runs(
        [e.experiment_id for e in tracking.uris.client().search_experiments()]
    )
    folder = tracking.local_artifact_dir(run.info.run_id) / tracking.CHECKPOINT_DIR
    assert lines[0] == (
        f"statmech-nn train: error: no space left on device: {folder / 'epoch_0000.pt'}"
    )
    assert run.info.status == "FAILED"
    assert [p.name for p in folder.iterdir()] == [tracking.CONFIG_NAME]  # no partial, no temp
