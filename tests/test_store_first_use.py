"""Concurrent first use of a tracking store: four processes creating one SQLite store at once.

Without a cached template database every process runs MLflow's migrations itself; unserialised,
they collide ("duplicate column name", "_alembic_tmp_* already exists") and leave a store that
every later command refuses. Store creation must be safe without relying on the cache. And a
store that does not open gets advice that fits it: a local file is named, with what to do about
it; a tracking server keeps the server advice.
"""

from __future__ import annotations

import multiprocessing
import os

import pytest

WORKERS = 4


def _first_use(uri: str, cache: str, barrier, results) -> None:
    os.environ["STATMECH_CACHE"] = cache
    from statmech_nn import tracking

    barrier.wait(timeout=120)
    try:
        tracking.init_store(uri)
        with tracking.run("first-use", run_name="r"):
            pass
        results.put("ok")
    except BaseException as exc:  # reported to the parent, which asserts on it
        results.put(f"{type(exc).__name__}: {exc}")


@pytest.mark.slow
def test_four_processes_create_one_store_at_once(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(WORKERS)
    results = ctx.Queue()
    procs = [
        ctx.Process(target=_first_use, args=(uri, str(tmp_path / f"cache{i}"), barrier, results))
        for i in range(WORKERS)
    ]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=300)
    outcomes = [results.get(timeout=5) for _ in procs]
    assert outcomes == ["ok"] * WORKERS, outcomes

    from mlflow.tracking import MlflowClient

    from statmech_nn import tracking

    tracking.init_store(uri)  # a later command still opens the store
    exp = MlflowClient(tracking_uri=uri).get_experiment_by_name("first-use")
    runs = MlflowClient(tracking_uri=uri).search_runs([exp.experiment_id])
    assert len(runs) == WORKERS


@pytest.mark.slow  # the command opens (and fails to migrate) the store: about a second
def test_a_local_store_that_does_not_open_names_its_file_and_what_to_do(workdir, capsys):
    """A corrupt ``mlflow.db`` is no server: the line names the file and says to move it away."""
    from statmech_nn import cli

    db = workdir / "mlruns" / "mlflow.db"
    db.parent.mkdir()
    db.write_bytes(b"this is not a database\n" * 64)
    before = db.read_bytes()
    assert cli.main(["query", "--tracking-uri", f"sqlite:///{db}"]) == 2
    line = capsys.readouterr().err.strip()
    assert "\n" not in line and f"cannot open the MLflow store {db}" in line, line
    assert "move it away" in line and "readable and writable" in line, line
    assert "start the server" not in line, line
    assert db.read_bytes() == before  # the user's file is left for them to inspect


def test_a_server_that_does_not_answer_gets_the_server_advice(workdir, closed_port):
    from statmech_nn import tracking
    from statmech_nn.errors import TrackingError

    uri = f"http://127.0.0.1:{closed_port()}"
    with pytest.raises(TrackingError) as caught:
        tracking.init_store(uri)
    message = str(caught.value)
    assert f"cannot reach the MLflow tracking server at {uri}" in message
    assert "start the server or pass another --tracking-uri" in message
    assert "move it away" not in message
