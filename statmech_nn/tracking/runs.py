"""MLflow runs that record their outcome and their process; the sweep of runs of dead processes."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Mapping
from typing import Any

from statmech_nn import processes
from statmech_nn.errors import ConfigError, TrackingError
from statmech_nn.naming import ENDED_BY_TAG, KIND_TAG, PROCESS_TAG
from statmech_nn.tracking.http import LOST, http_limits
from statmech_nn.tracking.pending import TrackingLost, record_end
from statmech_nn.tracking.uris import (
    EXPERIMENT_TAGS,
    artifact_root,
    client,
    current_uri,
    first_line,
    is_remote,
)


def experiment_id(name: str) -> str:
    """The id of experiment ``name``, created (with our artifact location and tags) if missing.

    Safe when several processes create the same experiment at once.
    """
    from mlflow.exceptions import MlflowException

    mlflow_client = client()
    found = mlflow_client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    try:
        return mlflow_client.create_experiment(
            name, artifact_location=artifact_root(current_uri()), tags=EXPERIMENT_TAGS
        )
    except MlflowException:
        found = mlflow_client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


def get_run(run_id: str):
    """The MLflow run ``run_id``; :class:`TrackingError` if the store has no such run."""
    from mlflow.exceptions import MlflowException

    try:
        return client().get_run(run_id)
    except MlflowException as exc:
        raise TrackingError(
            f"no MLflow run {run_id!r} in {current_uri()}; check the run id, or pass the "
            "--tracking-uri of the store that holds it"
        ) from exc


def _process_tag() -> str:
    return json.dumps(processes.identity())


def _run_tags(tags: Mapping[str, Any] | None, kind: str | None) -> dict[str, str]:
    """The caller's tags as strings, plus the run kind and this process."""
    out = {k: str(v) for k, v in (tags or {}).items()}
    if kind is not None:
        out[KIND_TAG] = kind
    out[PROCESS_TAG] = _process_tag()
    return out


def _experiment_for(experiment: str | None, parent_run_id: str | None) -> str:
    """The experiment id of a new run: ``experiment``, else the parent's, else ``Default``."""
    if experiment is not None:
        return experiment_id(experiment)
    parents = get_run(parent_run_id).info.experiment_id if parent_run_id else None
    return parents if parents is not None else experiment_id("Default")


def _create_run(
    experiment: str | None,
    run_name: str | None,
    parent_run_id: str | None,
    tags: dict[str, str],
) -> str:
    """Create a RUNNING run (nested under ``parent_run_id`` if given); its id."""
    from mlflow.tracking.context import registry as context_registry
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

    exp_id = _experiment_for(experiment, parent_run_id)
    if parent_run_id is not None:
        get_run(parent_run_id)
        tags[MLFLOW_PARENT_RUN_ID] = parent_run_id
    if run_name:
        tags[MLFLOW_RUN_NAME] = run_name
    created = client().create_run(
        exp_id, tags=context_registry.resolve_tags(tags), run_name=run_name
    )
    return created.info.run_id


@contextlib.contextmanager
def run(
    experiment: str | None,
    run_name: str | None = None,
    parent_run_id: str | None = None,
    tags: Mapping[str, Any] | None = None,
    resume_run_id: str | None = None,
    kind: str | None = None,
) -> Iterator[Any]:
    """Start (or resume) an MLflow run as the active run; yield mlflow's ``ActiveRun``.

    The run ends FINISHED, FAILED on an exception, KILLED on ``KeyboardInterrupt``; the exception
    is re-raised. Works inside another active run (the new one is pushed on mlflow's run stack).
    ``experiment=None`` uses the parent's experiment (or ``"Default"``). ``kind`` (one of the
    ``naming.KIND_*`` values) is written as the tag ``naming.KIND_TAG``.
    """
    import mlflow

    all_tags = _run_tags(tags, kind)
    if resume_run_id is not None:
        found = get_run(resume_run_id)
        run_id = found.info.run_id
        mlflow_client = client()
        if ENDED_BY_TAG in found.data.tags:  # the run lives again: no longer ended by a sweep
            mlflow_client.delete_tag(run_id, ENDED_BY_TAG)
        for key, value in all_tags.items():
            mlflow_client.set_tag(run_id, key, value)
    else:
        run_id = _create_run(experiment, run_name, parent_run_id, all_tags)
    active = mlflow.start_run(run_id=run_id, nested=mlflow.active_run() is not None)
    try:
        yield active
    except KeyboardInterrupt:
        _end_or_defer(run_id, "KILLED", None)
        raise
    except BaseException as exc:
        _end_or_defer(run_id, "FAILED", exc)
        raise
    _end_or_defer(run_id, "FINISHED", None)


def child_run(
    parent_run_id: str, name: str, experiment: str | None = None, kind: str | None = None
):
    """A run ``name`` nested under ``parent_run_id``, by default in the parent's experiment."""
    return run(experiment, run_name=name, parent_run_id=parent_run_id, kind=kind)


def _end(run_id: str, status: str) -> None:
    import mlflow

    current = mlflow.active_run()
    if current is not None and current.info.run_id == run_id:
        mlflow.end_run(status)
    else:
        client().set_terminated(run_id, status)


def _end_or_defer(run_id: str, status: str, failure: BaseException | None) -> None:
    """End the run; where its tracking server is lost, record the end for the next command.

    After :class:`~statmech_nn.tracking.pending.TrackingLost` the server is asked once more
    without retries (a second round of retries would double the wait). A lost end while an
    exception propagates stays silent (that exception is the error); at a normal end it is a
    one-line error.
    """
    uri = current_uri()
    if isinstance(failure, TrackingLost):
        record_end(uri, run_id, status)
        with contextlib.suppress(Exception), http_limits(LOST, force=True):
            _end(run_id, status)  # pops mlflow's active run; marks the run if the server is back
        return
    try:
        _end(run_id, status)
    except Exception as exc:
        if not is_remote(uri):
            raise
        record_end(uri, run_id, status)
        if failure is None:
            raise TrackingLost(
                f"could not mark run {run_id} {status} at {uri} ({first_line(exc)}); the next "
                "statmech-nn command that reaches the server marks it"
            ) from exc


def _process_of(run: Any) -> Any:
    """The process mark a run recorded (``None`` when absent or unreadable)."""
    try:
        return json.loads(run.data.tags.get(PROCESS_TAG, "null"))
    except ValueError:
        return None


def sweep_dead_runs(experiment_ids: list[str] | None = None) -> list[str]:
    """Mark KILLED the RUNNING runs whose process, on this host, is gone (e.g. SIGKILL).

    Runs record their process under :data:`PROCESS_TAG`; runs of live processes, of other hosts
    or without the tag are left alone. Returns the ids of the runs it marked.
    """
    mlflow_client = client()
    if experiment_ids is None:
        experiment_ids = [e.experiment_id for e in mlflow_client.search_experiments()]
    if not experiment_ids:
        return []
    marked = []
    for found in mlflow_client.search_runs(
        experiment_ids, filter_string="attributes.status = 'RUNNING'", max_results=1000
    ):
        mark = _process_of(found)
        if isinstance(mark, dict) and processes.on_this_host(mark) and not processes.alive(mark):
            mlflow_client.set_tag(found.info.run_id, ENDED_BY_TAG, "sweep: its process is gone")
            mlflow_client.set_terminated(found.info.run_id, "KILLED")
            marked.append(found.info.run_id)
    return marked


def refuse_live_resume(found: Any, force: bool = False) -> None:
    """Refuse to resume a RUNNING run that another process may still be training.

    A run whose recorded process (:data:`PROCESS_TAG`) is alive on this host is always refused;
    a RUNNING run of another host (or without a process mark) only without ``force``. A dead
    local process's run was marked KILLED by the sweep and passes.
    """
    if found.info.status != "RUNNING":
        return
    run_id = found.info.run_id
    mark = _process_of(found)
    if isinstance(mark, dict) and processes.on_this_host(mark):
        if processes.alive(mark):
            raise ConfigError(
                f"run {run_id} is still training (pid {mark.get('pid')} on this host); two "
                "processes must not train one run: wait for it to end, or stop it first"
            )
        return
    where = (
        f"on host {mark.get('host')} (pid {mark.get('pid')})"
        if isinstance(mark, dict)
        else ("and records no process")
    )
    if not force:
        raise ConfigError(
            f"run {run_id} is RUNNING {where}; it may still be training there. If that "
            "process is gone, pass --force-resume"
        )


def logged_steps(run_id: str) -> dict[str, set[int]]:
    """The steps at which each metric of ``run_id`` was logged."""
    mlflow_client = client()
    keys = get_run(run_id).data.metrics
    return {key: {m.step for m in mlflow_client.get_metric_history(run_id, key)} for key in keys}
