"""Optuna studies on ANDC thresholds: storages, worker processes, MLflow logging, summaries.

A study is created once (:func:`ensure_study`), then ``workers`` processes each ``load_study``
and optimise until the study holds the requested number of COMPLETE trials
(:class:`optuna.study.MaxTrialsCallback`; a few more may finish when workers end together).

Storages (:func:`open_storage`): by default an Optuna journal file ``mlruns/optuna.journal``
(``JournalStorage(JournalFileBackend)``: safe for processes on one machine, never the MLflow
SQLite file); any SQLAlchemy RDB URL (``postgresql://...``, ``sqlite:///other.db``) for workers
on many machines, opened with a heartbeat (``heartbeat_interval``, ``grace_period``) and
:class:`optuna.storages.RetryHeartbeatStaleTrialCallback`, so the trial of a worker that died is
failed and re-queued by the next worker that starts a trial. Optuna 5's journal storage has no
heartbeat; for it (and, faster, for any storage) the supervising process fails and re-queues the
RUNNING trials of a local worker that died, and every run first sweeps RUNNING trials left by
dead processes of this host (each trial records its worker's host, pid and process start time).

Every finished trial is logged by :class:`MlflowTrialLogger` as a run nested under the study's
MLflow run (thresholds as params, ``andc.*`` metrics); :func:`summarize` logs the Pareto front,
best thresholds and the Pareto plot (with the random-control curve) to the study run.
"""

from __future__ import annotations

import contextlib
import json
import math
import multiprocessing
import os
import re
import socket
import sys
import time
import uuid
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from statmech_nn.data.splits import subset
from statmech_nn.errors import SchemaError, StatmechError
from statmech_nn.order.schema import check_theta
from statmech_nn.pruning import (
    FeatureCache,
    SiteFeatures,
    keep_from_diagonals,
    random_control_curve,
)

_RUN_ID = re.compile(r"[A-Za-z0-9][\w-]{0,255}")

DEFAULT_JOURNAL = Path("mlruns") / "optuna.journal"
RDB_SCHEMES = ("sqlite", "postgresql", "postgres", "mysql", "mariadb", "oracle", "mssql")
OBJECTIVES: dict[str, tuple[str, ...]] = {
    "pareto": ("maximize", "maximize"),
    "constrained": ("maximize",),
}
THETA_RANGE = (0.01, 0.99)
PROBLEM_SCHEMA = "statmech-nn.andc-problem/1"
WORKER_ATTR = "worker"
METRICS_ATTR = "metrics"


class StorageError(StatmechError, ValueError):
    """An Optuna storage URL that is not supported or cannot be opened."""


class StudyMismatchError(StatmechError):
    """A study name that already exists with other objectives or settings."""


class WorkerError(StatmechError):
    """A study worker process that failed (its traceback is on stderr)."""


# -- storages ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Heartbeat:
    """Heartbeat of RDB storages: a RUNNING trial silent for ``grace_period`` s is failed."""

    interval: int = 60
    grace_period: int = 120
    max_retry: int | None = 3


def normalize_storage(url: str | os.PathLike | None) -> str:
    """A storage URL workers can reopen from any working directory.

    ``None`` -> ``journal:`` + absolute ``mlruns/optuna.journal``; a plain path (no ``://``) ->
    ``journal:`` + that file, absolute; ``sqlite:///relative.db`` is made absolute; other RDB
    URLs are kept. Unknown schemes raise :class:`StorageError`.
    """
    if url is None or str(url) == "":
        return "journal:" + str((Path.cwd() / DEFAULT_JOURNAL).resolve())
    text = str(url)
    if text.startswith("journal:"):
        path = Path(text.removeprefix("journal:").removeprefix("//"))
        return "journal:" + str(path.expanduser().resolve())
    if "://" not in text:
        return "journal:" + str(Path(text).expanduser().resolve())
    scheme = urlparse(text).scheme.lower()
    base = scheme.split("+", 1)[0]
    if base not in RDB_SCHEMES:
        raise StorageError(
            f"unsupported Optuna storage {_redact(text)!r} (scheme {scheme!r}); use a journal "
            "file path (default mlruns/optuna.journal) or an RDB URL such as "
            "postgresql://user@host:5432/db or sqlite:///optuna.db"
        )
    if base == "sqlite":
        rest = text.split(":///", 1)[1] if ":///" in text else ""
        if rest and rest != ":memory:" and not rest.startswith("/"):
            return f"{text.split(':///', 1)[0]}:///{(Path.cwd() / rest).resolve()}"
    return text


def _redact(url: str) -> str:
    parsed = urlparse(url)
    if parsed.password:
        return url.replace(f":{parsed.password}@", ":***@")
    return url


def _is_mlflow_sqlite(path: Path) -> bool:
    if not path.is_file() or path.stat().st_size == 0:
        return False
    import sqlite3

    with open(path, "rb") as fh:
        if fh.read(16) != b"SQLite format 3\x00":
            return False
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as con:
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master")}
    except sqlite3.Error:
        return False
    return {"experiments", "runs"} <= tables


def _postgres_driver_url(url: str) -> str:
    """``postgresql://`` with an installed driver: SQLAlchemy 2.1 defaults to psycopg 3, our
    ``postgres`` extra installs psycopg2."""
    scheme, rest = url.split("://", 1)
    if "+" in scheme:
        return url
    import importlib.util

    for module, driver in (("psycopg", "psycopg"), ("psycopg2", "psycopg2")):
        if importlib.util.find_spec(module) is not None:
            return f"postgresql+{driver}://{rest}"
    raise StorageError(
        "PostgreSQL storage needs a driver: pip install 'statmech-nn[postgres]' (psycopg2)"
    )


def open_storage(
    url: str | os.PathLike | None = None, heartbeat: Heartbeat | None = None
) -> optuna.storages.BaseStorage:
    """Open the Optuna storage ``url`` (see :func:`normalize_storage`).

    RDB storages get ``heartbeat`` (default :class:`Heartbeat`); refuses the MLflow store.
    """
    url = normalize_storage(url)
    heartbeat = heartbeat or Heartbeat()
    if url.startswith("journal:"):
        path = Path(url.removeprefix("journal:"))
        if _is_mlflow_sqlite(path) or path.suffix in (".db", ".sqlite"):
            raise StorageError(
                f"{path} looks like an SQLite database (the MLflow store?); the journal storage "
                "needs its own file, e.g. mlruns/optuna.journal"
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        return JournalStorage(JournalFileBackend(str(path)))
    scheme = urlparse(url).scheme.split("+", 1)[0]
    if scheme == "sqlite":
        db = Path(url.split(":///", 1)[1]) if ":///" in url else None
        if db is not None and _is_mlflow_sqlite(db):
            raise StorageError(
                f"{db} is an MLflow tracking database; give Optuna its own file, e.g. "
                "sqlite:///mlruns/optuna.db, or use the default journal storage"
            )
    if scheme in ("postgresql", "postgres"):
        url = _postgres_driver_url(url)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        callback = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=heartbeat.max_retry)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(
                url,
                engine_kwargs={"pool_pre_ping": True},
                heartbeat_interval=heartbeat.interval,
                grace_period=heartbeat.grace_period,
                heartbeat_stale_trial_callback=callback,
            )
    except Exception as exc:  # noqa: BLE001 - driver and connection errors of any kind
        raise StorageError(
            f"cannot open Optuna storage {_redact(url)}: {str(exc).strip().splitlines()[0][:300]}"
        ) from exc


# -- studies -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StudySpec:
    """What defines a study: its name, directions, and attributes that must match on resume."""

    name: str
    directions: tuple[str, ...]
    attrs: Mapping[str, Any] = field(default_factory=dict)


def _existing_study_id(storage: optuna.storages.BaseStorage, name: str) -> int | None:
    try:
        return storage.get_study_id_from_name(name)
    except KeyError:
        return None


def check_study(storage: optuna.storages.BaseStorage, spec: StudySpec) -> bool:
    """``True`` if ``spec.name`` exists and matches ``spec``, ``False`` if it does not exist.

    Raises :class:`StudyMismatchError` (having written nothing) if it exists with other
    directions or attributes.
    """
    study_id = _existing_study_id(storage, spec.name)
    if study_id is None:
        return False
    directions = tuple(d.name.lower() for d in storage.get_study_directions(study_id))
    attrs = storage.get_study_user_attrs(study_id)
    problems = []
    if directions != tuple(spec.directions):
        problems.append(f"directions {list(directions)} (asked {list(spec.directions)})")
    for key, value in spec.attrs.items():
        if key in attrs and attrs[key] != _jsonable(value):
            problems.append(f"{key}={attrs[key]!r} (asked {value!r})")
    if problems:
        raise StudyMismatchError(
            f"study {spec.name!r} already exists with "
            + "; ".join(problems)
            + "; choose another --study-name, or repeat the original settings to resume it"
        )
    return True


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value))


def ensure_study(storage: optuna.storages.BaseStorage, spec: StudySpec) -> optuna.Study:
    """Create study ``spec.name`` (recording ``spec.attrs``) or load it if it matches."""
    if not check_study(storage, spec):
        try:
            study = optuna.create_study(
                storage=storage, study_name=spec.name, directions=list(spec.directions)
            )
        except optuna.exceptions.DuplicatedStudyError:
            check_study(storage, spec)
        else:
            for key, value in spec.attrs.items():
                study.set_user_attr(key, _jsonable(value))
            return study
    return optuna.load_study(study_name=spec.name, storage=storage)


def make_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    """The sampler ``name`` seeded with ``seed`` (``tpe``: Optuna 5's default, set explicitly)."""
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    raise StatmechError(f"unknown sampler {name!r}; choose tpe, random or nsga2")


# -- worker bookkeeping --------------------------------------------------------------------------


def _process_start(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def worker_tag(token: str) -> dict[str, Any]:
    """Identity of this process, stored on each trial: host, pid, start time, token."""
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "start": _process_start(pid), "token": token}


def _alive(tag: Mapping[str, Any]) -> bool:
    """Whether the process described by ``tag`` (same host) still runs."""
    pid = int(tag.get("pid", -1))
    if pid <= 0:
        return False
    if Path("/proc").is_dir():
        start = _process_start(pid)
        return start is not None and tag.get("start") in (None, start)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def retry_trial(study: optuna.Study, trial: FrozenTrial, max_retry: int | None = 3) -> bool:
    """Fail RUNNING ``trial`` and queue a copy (as Optuna's heartbeat retry does).

    Returns ``False`` if the trial had already finished (someone else handled it).
    """
    try:
        ok = study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
    except (optuna.exceptions.UpdateFinishedTrialError, RuntimeError):
        return False
    if ok is False:
        return False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retry)(study, trial)
    return True


def recover_dead_trials(
    study: optuna.Study,
    tokens: Sequence[str] | None = None,
    max_retry: int | None = 3,
) -> list[int]:
    """Fail and re-queue RUNNING trials of dead workers; returns their trial numbers.

    With ``tokens``: the trials of those (known dead) workers. Without: trials whose recorded
    worker ran on this host and is no longer alive.
    """
    host = socket.gethostname()
    done = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        tag = trial.user_attrs.get(WORKER_ATTR)
        if not isinstance(tag, Mapping):
            continue
        if tokens is not None:
            dead = tag.get("token") in tokens
        else:
            dead = tag.get("host") == host and not _alive(tag)
        if dead and retry_trial(study, trial, max_retry):
            done.append(trial.number)
    return done


# -- workers -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MlflowTarget:
    """Where trial runs go: the tracking URI and the study run they are nested under."""

    tracking_uri: str
    experiment_id: str
    study_run_id: str
    study_name: str


@dataclass(frozen=True)
class WorkerJob:
    """Everything a worker process needs; picklable (the objective must be a top-level callable
    or a dataclass instance of one)."""

    storage: str
    study_name: str
    objective: Callable[[optuna.Trial], Any]
    target_complete: int
    seed: int
    token: str
    sampler: str = "tpe"
    heartbeat: Heartbeat = field(default_factory=Heartbeat)
    mlflow: MlflowTarget | None = None


class _Tagged:
    """The objective, with the worker's identity stored on the trial first."""

    def __init__(self, objective: Callable[[optuna.Trial], Any], tag: dict[str, Any]) -> None:
        self.objective = objective
        self.tag = tag

    def __call__(self, trial: optuna.Trial) -> Any:
        trial.set_user_attr(WORKER_ATTR, self.tag)
        return self.objective(trial)


def run_worker(job: WorkerJob) -> int:
    """Optimise ``job.study_name`` until it has ``job.target_complete`` COMPLETE trials.

    Returns the number of trials this worker ran.
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)
    storage = open_storage(job.storage, job.heartbeat)
    study = optuna.load_study(
        study_name=job.study_name, storage=storage, sampler=make_sampler(job.sampler, job.seed)
    )
    if _n_complete(study) >= job.target_complete:
        return 0
    callbacks: list[Callable[[optuna.Study, FrozenTrial], None]] = [
        optuna.study.MaxTrialsCallback(job.target_complete, states=(TrialState.COMPLETE,))
    ]
    if job.mlflow is not None:
        callbacks.append(MlflowTrialLogger(job.mlflow))
    before = len(study.get_trials(deepcopy=False))
    study.optimize(
        _Tagged(job.objective, worker_tag(job.token)),
        n_trials=job.target_complete,
        callbacks=callbacks,
        gc_after_trial=False,
    )
    return len(study.get_trials(deepcopy=False)) - before


def _worker_main(job: WorkerJob) -> None:
    run_worker(job)


def _n_complete(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))


def _worker_seed(seed: int, n_existing: int, index: int) -> int:
    return int(np.random.SeedSequence([seed, n_existing, index]).generate_state(1)[0])


def run_workers(
    storage: str,
    study_name: str,
    objective: Callable[[optuna.Trial], Any],
    n_trials: int,
    workers: int = 1,
    seed: int = 0,
    sampler: str = "tpe",
    heartbeat: Heartbeat | None = None,
    mlflow: MlflowTarget | None = None,
    max_restarts: int | None = None,
    poll_s: float = 0.1,
) -> dict[str, Any]:
    """Add ``n_trials`` COMPLETE trials to an existing study with ``workers`` processes.

    ``workers=1`` runs in this process; more start ``spawn`` processes. A worker killed by a
    signal has its RUNNING trials failed and re-queued and is replaced (at most ``max_restarts``
    times, default ``workers``) while trials are missing; a worker that raises stops the run
    with :class:`WorkerError` after the others finish. Returns counts and the recovered trials.
    """
    if n_trials < 1:
        raise StatmechError(f"--trials must be at least 1, got {n_trials}")
    if workers < 1:
        raise StatmechError(f"--workers must be at least 1, got {workers}")
    heartbeat = heartbeat or Heartbeat()
    storage = normalize_storage(storage)
    study = optuna.load_study(study_name=study_name, storage=open_storage(storage, heartbeat))
    recovered = recover_dead_trials(study, max_retry=heartbeat.max_retry)
    start_complete = _n_complete(study)
    n_existing = len(study.get_trials(deepcopy=False))
    target = start_complete + n_trials

    def job(index: int) -> WorkerJob:
        return WorkerJob(
            storage=storage,
            study_name=study_name,
            objective=objective,
            target_complete=target,
            seed=_worker_seed(seed, n_existing, index),
            token=uuid.uuid4().hex,
            sampler=sampler,
            heartbeat=heartbeat,
            mlflow=mlflow,
        )

    failures: list[str] = []
    killed = 0
    if workers == 1:
        run_worker(job(0))
    else:
        ctx = multiprocessing.get_context("spawn")
        restarts_left = workers if max_restarts is None else max_restarts
        running: dict[Any, WorkerJob] = {}
        next_index = 0
        for _ in range(workers):
            j = job(next_index)
            next_index += 1
            p = ctx.Process(target=_worker_main, args=(j,), name=f"study-worker-{next_index}")
            p.start()
            running[p] = j
        while running:
            time.sleep(poll_s)
            for p in [p for p in running if not p.is_alive()]:
                j = running.pop(p)
                p.join()
                if p.exitcode == 0:
                    continue
                recovered += recover_dead_trials(study, [j.token], heartbeat.max_retry)
                if p.exitcode is not None and p.exitcode < 0:
                    killed += 1
                    if restarts_left > 0 and _n_complete(study) < target:
                        restarts_left -= 1
                        nj = job(next_index)
                        next_index += 1
                        np_ = ctx.Process(target=_worker_main, args=(nj,))
                        np_.start()
                        running[np_] = nj
                else:
                    failures.append(f"{p.name} exited with code {p.exitcode}")
    if failures:
        raise WorkerError("study workers failed: " + "; ".join(failures) + " (tracebacks above)")
    end_complete = _n_complete(study)
    return {
        "complete_before": start_complete,
        "complete_after": end_complete,
        "added": end_complete - start_complete,
        "killed_workers": killed,
        "recovered_trials": sorted(set(recovered)),
    }


# -- MLflow logging of trials --------------------------------------------------------------------


def _retrying(fn: Callable[[], Any], attempts: int = 8) -> Any:
    delay = 0.05
    for attempt in range(attempts):
        try:
            return fn()
        except Exception:  # noqa: BLE001 - SQLite "database is locked" and friends
            if attempt == attempts - 1:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 2.0)
    return None


class MlflowTrialLogger:
    """Optuna callback: each finished trial becomes an MLflow run nested under the study run.

    Params: the trial's parameters (thresholds). Metrics: the ``metrics`` user attribute
    (``andc.accuracy``, ``andc.pruned_fraction``, per-site values) and the objective values.
    Tags: study name, trial number, state, retried trial. Status FINISHED for COMPLETE trials,
    FAILED otherwise. Writes are retried (SQLite stores are shared by several workers).
    """

    def __init__(self, target: MlflowTarget) -> None:
        self.target = target
        self._client = None

    @property
    def client(self):
        if self._client is None:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=self.target.tracking_uri)
        return self._client

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        from mlflow.entities import Metric, Param, RunTag

        tags = {
            "mlflow.parentRunId": self.target.study_run_id,
            "mlflow.runName": f"trial-{trial.number}",
            "statmech_nn.kind": "trial",
            "optuna.study_name": self.target.study_name,
            "optuna.trial_number": str(trial.number),
            "optuna.state": trial.state.name,
        }
        retried = trial.system_attrs.get("failed_trial")
        if retried is not None:
            tags["optuna.retry_of"] = str(retried)
        run = _retrying(
            lambda: self.client.create_run(
                self.target.experiment_id, run_name=f"trial-{trial.number}", tags=tags
            )
        )
        run_id = run.info.run_id
        now = int(time.time() * 1000)
        metrics = dict(trial.user_attrs.get(METRICS_ATTR) or {})
        for i, value in enumerate(trial.values or []):
            metrics[f"objective.{i}"] = value
        for key, value in trial.constraints.items():
            metrics[f"constraint.{key}"] = value
        batch_metrics = [
            Metric(k, float(v), now, 0)
            for k, v in metrics.items()
            if isinstance(v, int | float) and math.isfinite(float(v))
        ]
        params = [
            Param(k, repr(v) if isinstance(v, float) else str(v)) for k, v in trial.params.items()
        ]
        _retrying(
            lambda: self.client.log_batch(
                run_id, metrics=batch_metrics, params=params, tags=[RunTag("optuna.logged", "1")]
            )
        )
        status = "FINISHED" if trial.state == TrialState.COMPLETE else "FAILED"
        _retrying(lambda: self.client.set_terminated(run_id, status))


# -- the ANDC problem: cached features + SNP diagonals -------------------------------------------


@dataclass
class AndcProblem:
    """Everything an ANDC trial needs, kept in one folder (loaded once per worker process).

    ``diag[layer, node, label]``: SNP diagonals ``M_n[j, j]`` of the studied sites (NaN for
    padded nodes), aligned with ``cache.layers``; ``site_names`` name the layers (for parameter
    names such as ``theta.block6``). ``variant="cluster"`` also keeps the full matrices.
    """

    cache: FeatureCache
    diag: np.ndarray
    site_names: list[str]
    kind: str = "ff"
    variant: str = "diagonal"
    min_cluster_size: int = 1
    matrices: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.valid = ~np.isnan(self.diag).all(-1)
        self.base = self.cache.base_accuracy()
        self.base_accuracy = float(np.mean([self.base[layer] for layer in self.cache.layers]))
        self.total = int(self.valid.sum()) * self.diag.shape[-1]

    @property
    def layers(self) -> list[int]:
        return self.cache.layers

    def keep(self, thetas: np.ndarray) -> np.ndarray:
        """ANDC masks ``[layer, node, label]`` for one threshold per layer."""
        thetas = np.asarray(thetas, dtype=np.float64)
        if self.variant == "cluster":
            from statmech_nn.order.clusters import greedy_clusters
            from statmech_nn.pruning import _cluster_sizes

            binary = self.matrices > thetas[:, None, None, None]
            cluster = greedy_clusters(binary)
            keep = (cluster >= 0) & (_cluster_sizes(cluster) >= self.min_cluster_size)
        else:
            keep = keep_from_diagonals(self.diag, thetas)
        return keep & self.valid[..., None]

    def evaluate(self, theta: float | Sequence[float]) -> dict[str, float]:
        """Masked readout accuracy (mean over sites), its drop, and the pruned fraction."""
        thetas = np.broadcast_to(np.asarray(theta, dtype=np.float64), (len(self.layers),))
        for value in thetas:
            check_theta(float(value))
        keep = self.keep(thetas)
        out: dict[str, float] = {}
        accs = []
        for i, layer in enumerate(self.layers):
            acc = float(self.cache.accuracy(layer, keep[i]))
            accs.append(acc)
            kept = int(keep[i].sum())
            n = int(self.valid[i].sum()) * keep.shape[-1]
            out[f"andc.accuracy.{self.site_names[i]}"] = acc
            out[f"andc.pruned_fraction.{self.site_names[i]}"] = 1.0 - kept / n if n else 0.0
        out["andc.accuracy"] = float(np.mean(accs))
        out["andc.base_accuracy"] = self.base_accuracy
        out["andc.accuracy_drop"] = self.base_accuracy - out["andc.accuracy"]
        out["andc.pruned_fraction"] = 1.0 - int(keep.sum()) / self.total if self.total else 0.0
        return out

    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        self.cache.save(folder / "cache")
        np.save(folder / "diag.npy", self.diag.astype(np.float32))
        if self.matrices is not None:
            np.save(folder / "matrices.npy", self.matrices.astype(np.float32))
        meta = {
            "schema": PROBLEM_SCHEMA,
            "site_names": list(self.site_names),
            "kind": self.kind,
            "variant": self.variant,
            "min_cluster_size": self.min_cluster_size,
            **self.meta,
        }
        (folder / "problem.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> AndcProblem:
        folder = Path(folder)
        path = folder / "problem.json"
        if not path.is_file():
            raise SchemaError(f"{folder} holds no ANDC problem (no problem.json)")
        meta = json.loads(path.read_text(encoding="utf-8"))
        if meta.pop("schema", None) != PROBLEM_SCHEMA:
            raise SchemaError(f"{path} is not an ANDC problem ({PROBLEM_SCHEMA})")
        matrices_path = folder / "matrices.npy"
        return cls(
            cache=FeatureCache.load(folder / "cache"),
            diag=np.load(folder / "diag.npy", allow_pickle=False),
            site_names=meta.pop("site_names"),
            kind=meta.pop("kind"),
            variant=meta.pop("variant"),
            min_cluster_size=int(meta.pop("min_cluster_size")),
            matrices=(
                np.load(matrices_path, allow_pickle=False) if matrices_path.is_file() else None
            ),
            meta=meta,
        )


_PROBLEMS: dict[str, AndcProblem] = {}


def load_problem(folder: str | Path) -> AndcProblem:
    """:meth:`AndcProblem.load`, memoised per process (workers load their problem once)."""
    key = str(Path(folder).resolve())
    if key not in _PROBLEMS:
        _PROBLEMS[key] = AndcProblem.load(key)
    return _PROBLEMS[key]


def post_pool_diagonals(cache: FeatureCache) -> np.ndarray:
    """SNP diagonals ``M_n[j, j] / max M_n`` computed from a pooled cache (``post_pool``).

    ``M_n[i, j] = W[j, n] * mean_{b: y_b = i} X[b, n]``; exact for ``mean`` readouts and for
    ``seqpool`` with ``silencing="post_pool"``. Used for synthetic problems and checks.
    """
    out = []
    labels = np.asarray(cache.labels)
    for layer in cache.layers:
        site = cache.sites[layer]
        if site.form != "pooled":
            raise SchemaError("post_pool_diagonals needs pooled features (seqpool or mean)")
        x = np.asarray(site.inputs, dtype=np.float64)
        w = np.asarray(site.weight, dtype=np.float64)
        n_labels = w.shape[0]
        means = np.stack([x[labels == i].mean(0) for i in range(n_labels)])  # [i, n]
        m = means.T[:, :, None] * w.T[:, None, :]  # [n, i, j]
        scale = m.reshape(m.shape[0], -1).max(-1)
        safe = np.where(scale > 0, scale, 1.0)
        norm = np.where(scale[:, None, None] > 0, m / safe[:, None, None], 0.0)
        out.append(np.diagonal(norm, axis1=1, axis2=2))
    return np.stack(out).astype(np.float32)


def synthetic_problem(
    layers: int = 2,
    nodes: int = 32,
    labels: int = 10,
    samples: int = 600,
    seed: int = 0,
    labels_per_node: tuple[int, int] = (2, 6),
) -> AndcProblem:
    """A small ANDC problem with SNP-like structure, for tests, benchmarks and demos.

    Node ``n`` responds to a random label set ``D_n``: its pooled input is positive mainly on
    samples of those labels (noise falls with depth), and the readout weight ``W[j, n]`` is large
    for ``j`` in ``D_n``. Diagonals follow from :func:`post_pool_diagonals`.
    """
    rng = np.random.default_rng(seed)
    y = rng.integers(0, labels, samples)
    sites = {}
    for layer in range(layers):
        members = np.zeros((nodes, labels), dtype=bool)
        for n in range(nodes):
            k = int(rng.integers(labels_per_node[0], labels_per_node[1] + 1))
            members[n, rng.choice(labels, size=min(k, labels), replace=False)] = True
        noise = 1.0 / (1.0 + layer)
        signal = members[:, y].T.astype(np.float32)  # [b, n]
        x = np.maximum(signal + noise * rng.standard_normal((samples, nodes)), 0.0)
        w = members.T * rng.uniform(0.5, 1.5, (labels, nodes)) + 0.15 * rng.standard_normal(
            (labels, nodes)
        )
        sites[layer] = SiteFeatures("pooled", x.astype(np.float32), w.astype(np.float32))
    cache = FeatureCache(labels=y.astype(np.int64), sites=sites, meta={"synthetic": True})
    return AndcProblem(
        cache=cache,
        diag=post_pool_diagonals(cache),
        site_names=[f"block{i}" for i in range(layers)],
        meta={"synthetic": True},
    )


def _param(run: Any, key: str, default: Any = None) -> Any:
    value = run.data.params.get(key)
    if value is None or value == "None":
        return default
    return int(value)


def build_problem(
    run_id: str,
    kind: str = "ff",
    layers: Sequence[int] | None = None,
    variant: str = "diagonal",
    min_cluster_size: int = 1,
    root: str | Path = Path("mlruns") / "andc",
    device: str | None = None,
    progress: bool = True,
    tracking_uri: str | None = None,
    rebuild: bool = False,
) -> Path:
    """The ANDC problem folder of an SNP run (or a training run's newest SNP run).

    Built once and reused: the SNP diagonals of ``kind`` (``layers``, default all) and a
    :class:`FeatureCache` of the readouts' inputs on the SNP's split. The readouts are the ones
    the SNP run logged (``snp/readouts.pt``); for older SNP runs without them they are retrained
    with the run's recorded settings (same seed, data subset and order, so the same weights).
    ``problem.json`` records which (``readouts``: ``stored`` or ``retrained``); the cache's
    unmasked accuracy is checked against the SNP's ``acc_{kind}`` and both are recorded there.
    """
    import torch
    from mlflow.tracking import MlflowClient

    from statmech_nn import snp as snp_mod
    from statmech_nn import tracking
    from statmech_nn.pruning import diagonals, site_features
    from statmech_nn.readout import ReadoutConfig, make_loader, train_readouts
    from statmech_nn.sites import ActivationCapture, layer_label, resolve
    from statmech_nn.train import data_for_config

    if variant not in ("diagonal", "cluster"):
        raise StatmechError(f"unknown ANDC variant {variant!r}; choose diagonal or cluster")
    uri = tracking.init_store(tracking_uri)
    ds = snp_mod.load_from_run(run_id, tracking_uri=uri)
    snp_run_id = str(ds.attrs.get("mlflow_run_id") or run_id)
    if not _RUN_ID.fullmatch(snp_run_id):
        raise SchemaError(
            f"SNP tensor attribute mlflow_run_id={snp_run_id!r} is not a valid MLflow run id"
        )
    if f"snp_{kind}" not in ds:
        kinds = [str(v)[4:] for v in ds.data_vars if str(v).startswith("snp_")]
        raise SchemaError(f"SNP run {snp_run_id} has no site kind {kind!r}; it has {kinds}")
    all_layers = [
        int(v) for v in ds["layer"].values if not np.isnan(ds[f"acc_{kind}"].sel(layer=v))
    ]
    chosen = list(all_layers if layers is None else [int(v) for v in layers])
    missing = sorted(set(chosen) - set(all_layers))
    if missing:
        raise SchemaError(f"SNP run {snp_run_id} has no {kind} layers {missing}: {all_layers}")
    tag = f"{kind}-{variant}{min_cluster_size}-" + "_".join(map(str, chosen))
    folder = Path(root).resolve() / snp_run_id / tag
    if not folder.is_relative_to(Path(root).resolve()):
        raise SchemaError(f"ANDC problem folder {folder} would leave {root}")
    if (folder / "problem.json").is_file() and not rebuild:
        return folder

    training_run_id = str(ds.attrs.get("training_run_id") or "")
    if not training_run_id:
        raise SchemaError(f"SNP tensor of run {snp_run_id} does not name its training run")
    snp_run = MlflowClient(uri).get_run(snp_run_id)
    ckpt = tracking.load_checkpoint(training_run_id, int(ds.attrs["checkpoint_epoch"]))
    model = ckpt.model
    by_key = {(s.kind, s.layer): s for s in resolve(model, list(ds.attrs["sites"]))}
    sites = [by_key[(kind, layer)] for layer in chosen]
    config = ReadoutConfig(**json.loads(ds.attrs["readout_config"]))
    splits = data_for_config(ckpt.config, augment="none")
    seed = config.seed
    train = subset(splits.train, _param(snp_run, "limit_train"), seed)
    evaluated = subset(getattr(splits, ds.attrs["split"]), _param(snp_run, "limit_eval"), seed)
    num_labels = int(splits.num_classes)
    readouts = snp_mod.load_readouts(snp_run_id, sites, uri, device)
    source = "stored"
    if readouts is None:
        readouts = train_readouts(model, sites, train, num_labels, config, device, progress)
        source = "retrained"
    dev = next(iter(readouts.values())).fc.weight.device
    model.to(dev)
    chunks: dict[int, list[Any]] = {s.layer: [] for s in sites}
    labels = []
    model.eval()
    with ActivationCapture(model, sites) as capture, torch.no_grad():
        for batch in make_loader(evaluated, config.batch_size):
            acts = capture(batch[0].to(dev))
            labels.append(torch.as_tensor(batch[1]).long().numpy())
            for site in sites:
                r = readouts[site.name]
                a = acts[site.name]
                if config.readout == "seqpool":
                    f = site_features(a, "seqpool", r.fc.weight, r.pool.weight[0], r.pool.bias[0])
                elif config.readout == "flatten":
                    f = site_features(a, "flatten", r.weight_jnt())
                else:
                    f = site_features(a, "mean", r.fc.weight)
                chunks[site.layer].append(f)
    cache_sites = {}
    for layer, parts in chunks.items():
        axis = 0 if parts[0].form == "pooled" else 1
        cache_sites[layer] = SiteFeatures(
            parts[0].form, np.concatenate([p.inputs for p in parts], axis=axis), parts[0].weight
        )
    cache = FeatureCache(
        labels=np.concatenate(labels),
        sites=cache_sites,
        meta={"snp_run_id": snp_run_id, "split": ds.attrs["split"], "readout": config.readout},
    )
    diag = diagonals(ds, kind).sel(layer=chosen).values
    matrices = None
    if variant == "cluster":
        from statmech_nn.order.schema import node_matrices

        matrices = node_matrices(ds, kind).sel(layer=chosen).values
    snp_acc = {layer: float(ds[f"acc_{kind}"].sel(layer=layer)) for layer in chosen}
    cache_acc = cache.base_accuracy()
    mismatch = {
        k: (snp_acc[k], cache_acc[k]) for k in chosen if abs(snp_acc[k] - cache_acc[k]) > 1e-6
    }
    if mismatch:
        stderr(
            f"warning: {source} readouts do not reproduce the SNP run's accuracy exactly "
            f"(layer: (snp, cache) = {mismatch}); masks come from the stored SNP matrices"
        )
    names = [layer_label(s) for s in sites]
    problem = AndcProblem(
        cache=cache,
        diag=diag,
        site_names=names,
        kind=kind,
        variant=variant,
        min_cluster_size=int(min_cluster_size),
        matrices=matrices,
        meta={
            "snp_run_id": snp_run_id,
            "training_run_id": training_run_id,
            "readout": config.readout,
            "readouts": source,
            "silencing": str(ds.attrs.get("silencing", "")),
            "snp_accuracy": {str(k): v for k, v in snp_acc.items()},
            "cache_accuracy": {str(k): v for k, v in cache_acc.items()},
        },
    )
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    problem.save(tmp)
    if folder.exists():
        import shutil

        shutil.rmtree(folder)
    tmp.rename(folder)
    return folder


# -- objectives ----------------------------------------------------------------------------------


def suggest_thetas(trial: optuna.Trial, problem: AndcProblem, per_site: bool) -> np.ndarray:
    """Thresholds in ``THETA_RANGE`` (inside (0, 1)): one ``theta``, or ``theta.{site}`` each."""
    low, high = THETA_RANGE
    if per_site:
        return np.array([trial.suggest_float(f"theta.{s}", low, high) for s in problem.site_names])
    return np.full(len(problem.layers), trial.suggest_float("theta", low, high))


def pareto_objective(
    trial: optuna.Trial, problem: AndcProblem, per_site: bool = False
) -> tuple[float, float]:
    """Objectives (both maximised): masked readout accuracy, pruned fraction."""
    result = problem.evaluate(suggest_thetas(trial, problem, per_site))
    trial.set_user_attr(METRICS_ATTR, result)
    return result["andc.accuracy"], result["andc.pruned_fraction"]


def constrained_objective(
    trial: optuna.Trial, problem: AndcProblem, per_site: bool = False, delta: float = 0.01
) -> float:
    """Maximise the pruned fraction subject to ``accuracy drop - delta <= 0``."""
    result = problem.evaluate(suggest_thetas(trial, problem, per_site))
    trial.set_user_attr(METRICS_ATTR, result)
    trial.set_constraint("accuracy_drop", result["andc.accuracy_drop"] - delta)
    return result["andc.pruned_fraction"]


@dataclass(frozen=True)
class ProblemObjective:
    """A picklable objective: ``fn(trial, load_problem(problem_dir), **kwargs)``.

    ``fn`` must be importable by worker processes: a top-level function of a module, or of a
    script run as ``__main__`` (``spawn`` re-imports it).
    """

    fn: Callable[..., Any]
    problem_dir: str
    kwargs: Mapping[str, Any] = field(default_factory=dict)

    def __call__(self, trial: optuna.Trial) -> Any:
        return self.fn(trial, load_problem(self.problem_dir), **dict(self.kwargs))


# -- summaries -----------------------------------------------------------------------------------


def trial_rows(study: optuna.Study) -> list[dict[str, Any]]:
    """COMPLETE trials as rows: number, params, values, metrics, constraints."""
    rows = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        rows.append(
            {
                "number": t.number,
                "params": dict(t.params),
                "values": list(t.values or []),
                "metrics": dict(t.user_attrs.get(METRICS_ATTR) or {}),
                "constraints": dict(t.constraints),
            }
        )
    return rows


def best_trials(study: optuna.Study) -> list[FrozenTrial]:
    """The Pareto front (feasible trials only when constraints are set)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return list(study.best_trials)


def choose_best(
    front: Sequence[Mapping[str, Any]], base_accuracy: float, delta: float = 0.01
) -> Mapping[str, Any] | None:
    """The most pruned front point whose accuracy drop is at most ``delta`` (else the most
    accurate one)."""
    if not front:
        return None
    ok = [r for r in front if base_accuracy - r["metrics"]["andc.accuracy"] <= delta + 1e-12]
    if ok:
        return max(ok, key=lambda r: r["metrics"]["andc.pruned_fraction"])
    return max(front, key=lambda r: r["metrics"]["andc.accuracy"])


def pareto_plot(
    rows: Sequence[Mapping[str, Any]],
    front: Sequence[Mapping[str, Any]],
    control: Mapping[str, np.ndarray],
    base_accuracy: float,
    path: str | Path,
    title: str = "",
) -> Path:
    """Accuracy vs pruned fraction: all trials, the front, ANDC and random-control curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=120)
    if rows:
        ax.scatter(
            [r["metrics"]["andc.pruned_fraction"] for r in rows],
            [r["metrics"]["andc.accuracy"] for r in rows],
            s=10,
            c="0.7",
            label="trials",
        )
    if front:
        pts = sorted(
            (r["metrics"]["andc.pruned_fraction"], r["metrics"]["andc.accuracy"]) for r in front
        )
        ax.plot(*zip(*pts, strict=True), "o-", c="C3", ms=4, label="Pareto front")
    order = np.argsort(control["fraction"])
    frac = control["fraction"][order]
    ax.plot(frac, control["andc_accuracy"][order], "-", c="C0", label="ANDC (global theta)")
    mean, std = control["random_mean"][order], control["random_std"][order]
    ax.plot(frac, mean, "--", c="C2", label="random, same per-node counts")
    ax.fill_between(frac, mean - std, mean + std, color="C2", alpha=0.2)
    ax.axhline(base_accuracy, c="k", lw=0.8, ls=":", label="unpruned")
    ax.set_xlabel("pruned fraction of readout connections")
    ax.set_ylabel("readout accuracy (test)")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def summarize(
    study: optuna.Study,
    problem: AndcProblem,
    out_dir: str | Path,
    delta: float = 0.01,
    control_thetas: Sequence[float] | None = None,
    draws: int = 5,
    seed: int = 0,
) -> dict[str, Any]:
    """Write ``pareto_front.json``, ``best_thresholds.json``, ``trials.json``,
    ``random_control.json`` and ``pareto.png`` to ``out_dir``; return the summary."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = trial_rows(study)
    front_numbers = {t.number for t in best_trials(study)}
    front = [r for r in rows if r["number"] in front_numbers]
    best = choose_best(front, problem.base_accuracy, delta)
    if control_thetas is None:
        control_thetas = np.round(np.linspace(0.05, 0.95, 19), 4)
    control = random_control_curve(problem.cache, problem.diag, control_thetas, draws, seed)
    best_out = None
    if best is not None:
        best_out = {
            "trial": best["number"],
            "thresholds": best["params"],
            "accuracy": best["metrics"]["andc.accuracy"],
            "pruned_fraction": best["metrics"]["andc.pruned_fraction"],
            "accuracy_drop": best["metrics"]["andc.accuracy_drop"],
            "delta": delta,
        }
    files = {
        "trials.json": rows,
        "pareto_front.json": front,
        "best_thresholds.json": best_out,
        "random_control.json": {k: v.tolist() for k, v in control.items()},
    }
    for name, payload in files.items():
        (out_dir / name).write_text(json.dumps(payload, indent=2), encoding="utf-8")
    pareto_plot(
        rows,
        front,
        control,
        problem.base_accuracy,
        out_dir / "pareto.png",
        title=f"ANDC study {study.study_name}",
    )
    return {
        "n_complete": len(rows),
        "front": front,
        "best": best_out,
        "base_accuracy": problem.base_accuracy,
        "files": sorted([*files, "pareto.png"]),
    }


def log_summary(client: Any, run_id: str, summary: Mapping[str, Any], out_dir: str | Path) -> None:
    """Log the summary's files as artifacts (``study/``) and its best point as metrics."""
    out_dir = Path(out_dir)
    for name in summary["files"]:
        _retrying(lambda n=name: client.log_artifact(run_id, str(out_dir / n), "study"))
    best = summary.get("best")
    _retrying(lambda: client.log_metric(run_id, "andc.base_accuracy", summary["base_accuracy"]))
    _retrying(lambda: client.log_metric(run_id, "study.n_complete", summary["n_complete"]))
    if best:
        _retrying(lambda: client.log_metric(run_id, "andc.accuracy", best["accuracy"]))
        _retrying(
            lambda: client.log_metric(run_id, "andc.pruned_fraction", best["pruned_fraction"])
        )


# -- the runner ----------------------------------------------------------------------------------


def default_study_name(problem: AndcProblem, objective: str, per_site: bool) -> str:
    run = str(problem.meta.get("snp_run_id") or "local")[:8]
    return f"andc-{objective}-{problem.kind}-{run}" + ("-per-site" if per_site else "")


def _study_run(client: Any, snp_run_id: str, study_name: str, storage: str) -> str:
    """The MLflow ``study`` run of ``study_name`` under ``snp_run_id``: reused, else created."""
    parent = _retrying(lambda: client.get_run(snp_run_id))
    exp = parent.info.experiment_id
    found = _retrying(
        lambda: client.search_runs(
            [exp],
            filter_string=(
                f"tags.mlflow.parentRunId = '{snp_run_id}' and "
                f"tags.`statmech.study_name` = '{study_name}'"
            ),
            max_results=1,
        )
    )
    if found:
        run_id = found[0].info.run_id
        _retrying(lambda: client.update_run(run_id, status="RUNNING"))
        return run_id
    tags = {
        "mlflow.parentRunId": snp_run_id,
        "mlflow.runName": "study",
        "statmech_nn.kind": "study",
        "statmech.study_name": study_name,
        "statmech.optuna_storage": _redact(storage),
    }
    run = _retrying(lambda: client.create_run(exp, run_name="study", tags=tags))
    return run.info.run_id


def run_andc_study(
    problem_dir: str | Path,
    objective: Callable[..., Any] = pareto_objective,
    objective_name: str = "pareto",
    n_trials: int = 100,
    workers: int = 1,
    storage: str | None = None,
    study_name: str | None = None,
    per_site: bool = False,
    delta: float = 0.01,
    seed: int = 0,
    sampler: str = "tpe",
    snp_run_id: str | None = None,
    tracking_uri: str | None = None,
    heartbeat: Heartbeat | None = None,
    out_dir: str | Path | None = None,
    objective_kwargs: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Create or resume an ANDC study on ``problem_dir``, run it, summarise, log to MLflow.

    ``objective(trial, problem, **objective_kwargs)`` returns the values for the directions of
    ``objective_name`` (``pareto``: accuracy and pruned fraction, both maximised;
    ``constrained``: pruned fraction, with ``trial.set_constraint``). With ``snp_run_id`` the
    study gets an MLflow run ``study`` nested under that SNP run (reused on resume), each trial a
    run nested under it, and the summary files as artifacts. Running again with the same
    ``study_name`` adds ``n_trials`` trials to the same study.
    """
    if objective_name not in OBJECTIVES:
        raise StatmechError(
            f"unknown objective {objective_name!r}; choose one of {list(OBJECTIVES)}"
        )
    if not 0.0 <= delta < 1.0:
        raise StatmechError(f"delta={delta} must be an accuracy drop in [0, 1), e.g. 0.01")
    storage_url = normalize_storage(storage)
    problem = load_problem(problem_dir)
    snp_run_id = snp_run_id or problem.meta.get("snp_run_id")
    study_name = study_name or default_study_name(problem, objective_name, per_site)
    attrs: dict[str, Any] = {
        "objective": objective_name,
        "kind": problem.kind,
        "variant": problem.variant,
        "per_site": bool(per_site),
        "sites": list(problem.site_names),
        "snp_run_id": snp_run_id,
    }
    if objective_name == "constrained":
        attrs["delta"] = float(delta)
    spec = StudySpec(study_name, OBJECTIVES[objective_name], attrs)
    heartbeat = heartbeat or Heartbeat()
    study = ensure_study(open_storage(storage_url, heartbeat), spec)
    kwargs = {"per_site": per_site, **(objective_kwargs or {})}
    if objective_name == "constrained":
        kwargs.setdefault("delta", delta)
    wrapped = ProblemObjective(objective, str(Path(problem_dir).resolve()), kwargs)

    client = target = None
    if snp_run_id:
        from mlflow.tracking import MlflowClient

        from statmech_nn import tracking

        uri = tracking.init_store(tracking_uri)
        client = MlflowClient(tracking_uri=uri)
        study_run_id = _study_run(client, snp_run_id, study_name, storage_url)
        exp = client.get_run(study_run_id).info.experiment_id
        target = MlflowTarget(uri, exp, study_run_id, study_name)
        params = {
            "study_name": study_name,
            "objective": objective_name,
            "sampler": sampler,
            "per_site": per_site,
            "kind": problem.kind,
            "variant": problem.variant,
        }
        if objective_name == "constrained":
            params["delta"] = delta
        with contextlib.suppress(Exception):
            for key, value in params.items():
                client.log_param(study_run_id, key, str(value))
    status = "FAILED"
    try:
        counts = run_workers(
            storage_url, study_name, wrapped, n_trials, workers, seed, sampler, heartbeat, target
        )
        study = optuna.load_study(
            study_name=study_name, storage=open_storage(storage_url, heartbeat)
        )
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(out_dir) if out_dir is not None else Path(tmp)
            summary = summarize(study, problem, folder, delta=delta, seed=seed)
            if client is not None:
                log_summary(client, target.study_run_id, summary, folder)
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        if client is not None:
            with contextlib.suppress(Exception):
                client.set_terminated(target.study_run_id, status)
    return {
        **counts,
        **summary,
        "study_name": study_name,
        "storage": _redact(storage_url),
        "study_run_id": target.study_run_id if target else None,
    }


def stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
