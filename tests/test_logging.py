"""What the command shows while it works: epoch lines in a log file, the summary, -v / --quiet."""

from __future__ import annotations

import io
import logging
import re
import sys
from pathlib import Path

import optuna
import pytest

from statmech_nn import cli, logs, tracking

TRAIN = ["train", "--model", "cct_2_3x2_32", "--dataset", "digits", "--epochs", "2",
         "--img-size", "16", "--batch-size", "32", "--limit-train", "64", "--limit-eval", "32",
         "--device", "cpu", "--seed", "3"]  # fmt: skip
STAMP = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d"
EPOCH = re.compile(
    r"epoch (?P<epoch>\d+)/2  train_loss (?P<train_loss>\S+)  train_acc (?P<train_acc>\S+)  "
    r"val_loss (?P<val_loss>\S+)  val_acc (?P<val_acc>\S+)  test_acc (?P<test_acc>\S+)  "
    r"(?P<speed>\d+) img/s  ETA (?P<eta>\S+)$"
)


@pytest.fixture(autouse=True)
def _restore_logging():
    """Each test configures logging through the CLI; leave the loggers as they were."""
    names = (logs.ROOT, *logs.LIBRARIES)
    saved = {n: (logging.getLogger(n).level, list(logging.getLogger(n).handlers)) for n in names}
    yield
    for name, (level, handlers) in saved.items():
        logger = logging.getLogger(name)
        logger.setLevel(level)
        logger.handlers = handlers


def _run_with_stderr_in_a_file(argv, path, monkeypatch, capsys):
    with open(path, "w") as err:
        monkeypatch.setattr(sys, "stderr", err)
        code = cli.main(argv)
        monkeypatch.undo()
    assert code == 0
    return capsys.readouterr().out.strip().splitlines()[-1], path.read_text()


@pytest.mark.slow  # trains or runs a command end to end
def test_a_log_file_shows_every_epoch_and_the_summary(workdir, monkeypatch, capsys):
    run_id, text = _run_with_stderr_in_a_file(
        [*TRAIN, "--log-file", "logs/train.log"], workdir / "stderr.txt", monkeypatch, capsys
    )
    lines = [line for line in text.splitlines() if "statmech_nn" in line]
    epochs = [m for line in lines if (m := EPOCH.search(line))]
    assert [int(m["epoch"]) for m in epochs] == [1, 2], text
    for line in lines:  # not a terminal: every line has a timestamp, the level and the logger
        assert re.match(rf"^{STAMP} (INFO|WARNING) statmech_nn[.\w]*: ", line), line
    metrics = tracking.get_run(run_id).data.metrics  # the lines show the run's own numbers
    last = epochs[-1]
    for key in ("train_loss", "train_acc", "val_loss", "val_acc", "test_acc"):
        assert float(last[key]) == pytest.approx(metrics[key], rel=1e-3, abs=1e-12), key
    assert int(last["speed"]) > 0 and last["eta"] == "0s"
    summary = [line for line in lines if "trained run" in line]
    assert len(summary) == 1 and run_id in summary[0], text
    assert f"val_acc {float(last['val_acc']):.4g}" in summary[0]
    where = summary[0].split("checkpoints in ", 1)[1]
    assert tracking.checkpoint_path(run_id, 2).parent == Path(where)
    assert (workdir / "logs" / "train.log").read_text().count("epoch ") >= 2


@pytest.mark.slow  # trains or runs a command end to end
def test_quiet_prints_no_progress_lines(workdir, monkeypatch, capsys):
    run_id, text = _run_with_stderr_in_a_file(
        ["--quiet", *TRAIN], workdir / "stderr.txt", monkeypatch, capsys
    )
    assert tracking.get_run(run_id).info.status == "FINISHED"
    assert not EPOCH.search(text) and "trained run" not in text, text


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_plain_lines_and_libraries_stay_quiet(monkeypatch):
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    logs.configure()
    logging.getLogger("statmech_nn.train").info("epoch 1/1  x")
    logging.getLogger("statmech_nn.train").debug("hidden")
    logging.getLogger("statmech_nn.studies").warning("careful")
    assert terminal.getvalue().splitlines() == ["epoch 1/1  x", "warning: careful"]

    heard = _Collect()
    logging.getLogger("optuna").addHandler(heard)
    try:
        optuna.create_study(study_name="quiet")
        assert not [m for m in heard.messages if "A new study created" in m]
        logs.configure(verbose=1)
        optuna.create_study(study_name="loud")
        assert [m for m in heard.messages if "A new study created" in m]
    finally:
        logging.getLogger("optuna").removeHandler(heard)


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_output_flags_work_before_and_after_the_command():
    parser = cli.build_parser()
    for argv, (verbose, quiet, log_file) in {
        ("-v", "query"): (1, False, None),
        ("query", "-vv"): (2, False, None),
        ("--quiet", "query", "--log-file", "f.log"): (0, True, "f.log"),
        ("query",): (0, False, None),
    }.items():
        args = parser.parse_args(list(argv))
        assert (args.verbose, args.quiet, args.log_file) == (verbose, quiet, log_file), argv


def test_durations_for_log_lines():
    from statmech_nn.train.records import format_duration

    assert [format_duration(s) for s in (0, 42.4, 185, 7620, float("nan"))] == [
        "0s", "42s", "3m05s", "2h07m", "?",
    ]  # fmt: skip


@pytest.mark.parametrize("verbose", [0, 1])
def test_mlflow_download_bars_only_with_verbose(verbose, workdir, monkeypatch, capfd):
    """``load_snp`` and the report download artifacts; MLflow's bars are chatter unless ``-v``."""
    import mlflow

    monkeypatch.delenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", raising=False)
    with mlflow.start_run() as run:
        for name in ("a.txt", "b.txt"):
            (workdir / name).write_text(name)
            mlflow.log_artifact(str(workdir / name), "files")
    logs.configure(verbose=verbose)
    capfd.readouterr()
    mlflow.artifacts.download_artifacts(
        run_id=run.info.run_id, artifact_path="files", dst_path=str(workdir / "out")
    )
    assert sorted(p.name for p in (workdir / "out" / "files").iterdir()) == ["a.txt", "b.txt"]
    assert ("Downloading artifacts" in capfd.readouterr().err) == bool(verbose)


@pytest.mark.slow  # a fresh interpreter: Optuna must be imported after the CLI set the levels
@pytest.mark.parametrize("verbose", [0, 1])
def test_optuna_imported_after_configure_stays_quiet_unless_verbose(verbose, tmp_path):
    import subprocess

    from _tiny import subprocess_env

    code = (
        f"from statmech_nn import logs; logs.configure(verbose={verbose})\n"
        "from statmech_nn import studies\n"
        "import optuna; optuna.create_study(study_name='fresh')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=subprocess_env(),
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert ("A new study created" in done.stderr) == bool(verbose), done.stderr
