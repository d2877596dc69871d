"""Runs whose tracking server was lost mid-run: the checkpoint kept locally, the end deferred.

When a tracking server stops answering during training, the trainer writes the state of its last
finished epoch to ``mlruns/unsent/<run id>/`` of the working directory and records there the
status the run should get (``end.json``); the next command that reaches the server (any
``init_store``) marks the run so (see :func:`~statmech_nn.tracking.store.init_store`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from statmech_nn.errors import TrackingError
from statmech_nn.fileio import atomic_write_text

UNSENT_DIR = Path("mlruns") / "unsent"
END_FILE = "end.json"


class TrackingLost(TrackingError):
    """The tracking server stopped answering during a run (its end is recorded locally)."""


def unsent_folder(run_id: str) -> Path:
    """Where the local checkpoint and deferred end of ``run_id`` are kept."""
    return Path.cwd() / UNSENT_DIR / run_id


def keep_checkpoint(run_id: str, state: Mapping[str, Any], epoch: int) -> Path:
    """Write ``state`` as the local checkpoint of epoch ``epoch`` of ``run_id``; its path."""
    from statmech_nn.tracking.checkpoints import checkpoint_name, save_checkpoint

    return save_checkpoint(state, unsent_folder(run_id) / checkpoint_name(epoch))


def record_end(uri: str, run_id: str, status: str) -> Path:
    """Remember that ``run_id`` of the store ``uri`` is to end with ``status``."""
    record = {"tracking_uri": uri, "run_id": run_id, "status": status}
    return atomic_write_text(unsent_folder(run_id) / END_FILE, json.dumps(record))


def pending_ends(uri: str) -> Iterator[tuple[Path, str, str]]:
    """``(marker file, run id, status)`` of every deferred end recorded here for ``uri``."""
    for marker in sorted((Path.cwd() / UNSENT_DIR).glob(f"*/{END_FILE}")):
        try:
            record = json.loads(marker.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(record, dict) and record.get("tracking_uri") == uri:
            yield marker, str(record["run_id"]), str(record["status"])
