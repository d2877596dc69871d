"""Shared test fixtures: one torch thread, a throw-away working directory with its own ./mlruns,
the helpers several test modules use, and the ``requires`` marker for optional dependencies.

Helpers are session-scoped fixtures that return a function, so module-scoped fixtures can use
them too.
"""

from __future__ import annotations

import hashlib
import os
import socket
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)


class _Without:
    """An import hook that makes the top-level modules in ``$STATMECH_TEST_WITHOUT`` (comma
    separated, e.g. ``transformers,timm``) unimportable: the suite run as a user without an
    optional extra would run it, to check that only the tests needing the extra skip."""

    def __init__(self, names: Iterable[str]) -> None:
        self.names = {n.strip() for n in names if n.strip()}

    def find_spec(self, name: str, path: object = None, target: object = None) -> None:
        if name.partition(".")[0] in self.names:
            raise ModuleNotFoundError(f"No module named {name!r} (hidden by the tests)", name=name)


if os.environ.get("STATMECH_TEST_WITHOUT"):
    import sys

    sys.meta_path.insert(0, _Without(os.environ["STATMECH_TEST_WITHOUT"].split(",")))

os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing downloads at test time: models from configs
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "requires(*modules): skip the test unless every module imports"
    )


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Skip a test marked ``requires(...)`` when one of its optional modules does not import."""
    for marker in item.iter_markers("requires"):
        for module in marker.args:
            pytest.importorskip(module)


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A fresh working directory whose default tracking store is ``./mlruns`` inside it."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


@pytest.fixture(scope="session")
def vit_cct():
    """vit_pytorch's CCT module (the independent reference implementation), or a skip."""
    return pytest.importorskip("vit_pytorch.cct")


def _snapshot(folder: Path) -> dict[str, tuple[int, bytes]]:
    """Every file under ``folder`` with its mtime and content hash."""
    return {
        str(p.relative_to(folder)): (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).digest())
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="session")
def snapshot() -> Callable[[Path], dict[str, tuple[int, bytes]]]:
    """``snapshot(folder)``: every file under ``folder`` with its mtime and content hash."""
    return _snapshot


def _all_runs() -> list[tuple[str, str]]:
    import mlflow

    from statmech_nn import tracking

    tracking.init_store()
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    return sorted((r.info.run_id, r.info.status) for r in runs)


@pytest.fixture(scope="session")
def all_runs() -> Callable[[], list[tuple[str, str]]]:
    """``all_runs()``: (run id, status) of every MLflow run of the current store, sorted."""
    return _all_runs


def _one_line_error(argv: list[str], capsys, message: str) -> None:
    from statmech_nn import cli

    code = cli.main(argv)
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2, captured.err
    assert len(lines) == 1, captured.err
    assert lines[0].startswith(f"statmech-nn {argv[0]}: error: "), lines[0]
    assert message in lines[0], lines[0]
    assert "Traceback" not in captured.err


@pytest.fixture(scope="session")
def one_line_error() -> Callable[..., None]:
    """``one_line_error(argv, capsys, message)``: the command exits 2 with one error line."""
    return _one_line_error


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def closed_port() -> Callable[[], int]:
    """``closed_port()``: a loopback port nothing listens on (it was free a moment ago)."""
    return _closed_port


def _child_runs(parent: str, name: str) -> list:
    import mlflow

    return mlflow.search_runs(
        search_all_experiments=True,
        filter_string=f"tags.mlflow.parentRunId = '{parent}' and attributes.run_name = '{name}'",
        output_format="list",
    )


@pytest.fixture(scope="session")
def child_runs() -> Callable[[str, str], list]:
    """``child_runs(parent, name)``: the MLflow runs named ``name`` under the run ``parent``."""
    return _child_runs


def _fake_training_run(
    epochs: Iterable[int] = (1,),
    seed: int | None = None,
    experiment: str = "test",
    run_name: str = "fake-train",
) -> str:
    """A training run with checkpoints of untrained 6-label tiny CCTs on the synthetic data,
    seeded with ``seed`` (or with the epoch when None)."""
    from _tiny import SYNTHETIC

    from statmech_nn import models, tracking

    tracking.init_store()
    with tracking.run(experiment, run_name=run_name) as active:
        run_id = active.info.run_id
        for epoch in epochs:
            torch.manual_seed(epoch if seed is None else seed)
            model = models.create("cct_2_3x2_32", num_classes=6, img_size=16)
            config = {**SYNTHETIC, "model": "cct_2_3x2_32", "model_config": dict(model.config)}
            state = {
                "model": model.state_dict(),
                "model_config": dict(model.config),
                "config": config,
                "epoch": epoch,
            }
            tracking.log_checkpoint(run_id, state, epoch)
    return run_id


@pytest.fixture(scope="session")
def fake_training_run() -> Callable[..., str]:
    """``fake_training_run(epochs, seed, experiment, run_name)``: its run id (see above)."""
    return _fake_training_run
