"""Concurrent first use of a tracking store: four processes creating one SQLite store at once.

Without a cached template database every process runs MLflow's migrations itself; unserialised,
they collide ("duplicate column name", "_alembic_tmp_* already exists") and leave a store that
every later command refuses. Store creation must be safe without relying on the cache.
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
