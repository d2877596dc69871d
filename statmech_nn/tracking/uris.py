"""Where the tracking store is: URIs, the default store, artifact roots, the mlflow client."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse

DEFAULT_DB = Path("mlruns") / "mlflow.db"
REMOTE_SCHEMES = ("http", "https", "databricks", "databricks-uc", "uc")
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}
"""Tags of the experiments we create: MLflow's UI opens them on the runs view, not the GenAI one."""


def default_tracking_uri() -> str:
    """``sqlite:///mlruns/mlflow.db`` of the current working directory, as an absolute URI."""
    return "sqlite:///" + str((Path.cwd() / DEFAULT_DB).resolve())


def resolve_uri(uri: str | None = None) -> str:
    """The tracking URI to use: ``uri`` if given, else ``MLFLOW_TRACKING_URI``, else the default."""
    if uri:
        return uri
    env = os.environ.get("MLFLOW_TRACKING_URI")
    return env if env else default_tracking_uri()


def is_remote(uri: str) -> bool:
    """Whether ``uri`` names a tracking server (HTTP, Databricks) rather than a database."""
    return urlparse(uri).scheme in REMOTE_SCHEMES


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI; ``None`` for in-memory and other stores."""
    if not uri.startswith("sqlite:///"):
        return None
    rest = uri.removeprefix("sqlite:///")
    if not rest or rest == ":memory:":
        return None
    return Path(rest) if rest.startswith("/") else Path.cwd() / rest


def artifact_root(uri: str) -> str | None:
    """Where experiments created by us keep artifacts; ``None`` leaves it to a tracking server.

    For a SQLite store: ``artifacts/`` next to the database (``mlruns/artifacts`` by default);
    for other databases: ``mlruns/artifacts`` of the working directory.
    """
    if is_remote(uri):
        return None
    db = sqlite_path(uri)
    base = db.parent if db is not None else Path.cwd() / "mlruns"
    return (base / "artifacts").resolve().as_uri()


def current_uri() -> str:
    """mlflow's current tracking URI (as set by :func:`~statmech_nn.tracking.init_store`)."""
    import mlflow

    return mlflow.get_tracking_uri()


def client():
    """An ``MlflowClient`` of the current store."""
    from mlflow.tracking import MlflowClient

    return MlflowClient()


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (at most 300 characters), for one-line errors."""
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__
