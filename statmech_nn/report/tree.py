"""The run tree of a training run, read from MLflow parent by parent, and a run's PNG figures."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from statmech_nn.errors import TrackingError
from statmech_nn.naming import KIND_TAG, KIND_TRAIN, KIND_TRIAL

PARENT_TAG = "mlflow.parentRunId"
PAGE_SIZE = 1000
"""Runs asked for per ``search_runs`` page; every page is read, so no child is ever cut."""


@dataclass
class RunNode:
    """One MLflow run of the tree: its metadata, latest metrics and child runs."""

    run: Any
    kind: str
    children: list[RunNode] = field(default_factory=list)

    @property
    def run_id(self) -> str:
        return self.run.info.run_id

    @property
    def start_time(self) -> int:
        return int(self.run.info.start_time or 0)


def tracking_client() -> Any:
    """The MLflow client of the current tracking store."""
    from mlflow.tracking import MlflowClient

    return MlflowClient()


def child_runs(client: Any, experiment_id: str, parent_id: str) -> list[Any]:
    """Every run whose parent is ``parent_id``, newest first, read page by page."""
    runs: list[Any] = []
    token = None
    while True:
        page = client.search_runs(
            [experiment_id],
            filter_string=f"tags.{PARENT_TAG} = '{parent_id}'",
            max_results=PAGE_SIZE,
            order_by=["start_time DESC"],
            page_token=token,
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def run_tree(run_id: str) -> RunNode:
    """The training run ``run_id`` with all its descendants (nested runs), newest first per level.

    The tree is walked by parent, each parent's children read through every result page; trial
    runs are leaves and are not searched below.
    """
    from mlflow.exceptions import MlflowException

    client = tracking_client()
    try:
        root = client.get_run(run_id)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise TrackingError(f"no MLflow run {run_id!r} in the tracking store") from exc
        raise TrackingError(f"cannot read run {run_id!r}: {str(exc).splitlines()[0]}") from exc
    if root.data.tags.get(PARENT_TAG):
        raise TrackingError(
            f"run {run_id} is a child run ({root.data.tags.get(KIND_TAG, 'analysis')}); "
            f"report on its training run {root.data.tags[PARENT_TAG]}"
        )
    experiment = root.info.experiment_id

    def build(run: Any, kind: str) -> RunNode:
        node = RunNode(run, kind)
        if kind != KIND_TRIAL:
            for child in child_runs(client, experiment, run.info.run_id):
                child_kind = child.data.tags.get(KIND_TAG) or child.info.run_name or "run"
                node.children.append(build(child, child_kind))
        return node

    return build(root, KIND_TRAIN)


def descendants(node: RunNode) -> list[RunNode]:
    """Every run below ``node`` except trials (which are counted by their study), depth first."""
    out: list[RunNode] = []
    for child in node.children:
        if child.kind != KIND_TRIAL:
            out.append(child)
            out.extend(descendants(child))
    return out


def png_artifacts(run_id: str) -> list[tuple[str, bytes]]:
    """All PNG artifacts of a run as (artifact path, bytes), in path order."""
    import mlflow

    client = tracking_client()
    found: list[str] = []

    def walk(path: str | None) -> None:
        for item in client.list_artifacts(run_id, path):
            if item.is_dir:
                walk(item.path)
            elif item.path.endswith(".png"):
                found.append(item.path)

    walk(None)
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for path in sorted(found):
            local = mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path=path, dst_path=tmp
            )
            out.append((path, Path(local).read_bytes()))
    return out


def json_artifact(run_id: str, path: str) -> Any:
    """The JSON artifact ``path`` of a run, parsed; ``None`` when the run has no such artifact."""
    import json

    import mlflow
    from mlflow.exceptions import MlflowException

    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path=path, dst_path=tmp
            )
        except MlflowException as exc:  # an artifact a step did not write reads as absent
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise
        return json.loads(Path(local).read_text())


def metric_histories(run_id: str, names: list[str]) -> dict[str, list[tuple[int, float]]]:
    """``{name: [(step, value), ...]}`` in step order for those of ``names`` the run logged."""
    client = tracking_client()
    series = {}
    for name in names:
        history = client.get_metric_history(run_id, name)
        if history:
            series[name] = sorted((int(m.step), float(m.value)) for m in history)
    return series
