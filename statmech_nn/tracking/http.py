"""MLflow's HTTP timeout, retries and back-off: short and bounded unless the user set them."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

TIMEOUT_ENV = "MLFLOW_HTTP_REQUEST_TIMEOUT"
RETRIES_ENV = "MLFLOW_HTTP_REQUEST_MAX_RETRIES"
BACKOFF_ENV = "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"

PROBE = (5, 0, 1)
"""Timeout (s), retries and back-off factor of a probe: is the server there at all?"""

LOST = (2, 0, 1)
"""The last call to a server that was just found lost (its failure is expected and ignored)."""

TRAINING = (10, 2, 1)
"""The same while training: a lost server fails a request after about 3 x 10 s + 3 s at most.

MLflow's defaults (120 s, 7 retries, factor 2) keep a trainer silent for many minutes per call.
"""


_OURS: dict[str, str] = {}
"""The values this module set (an enclosing block's are not the user's)."""


def _user_set(key: str) -> bool:
    return key in os.environ and _OURS.get(key) != os.environ[key]


@contextlib.contextmanager
def http_limits(limits: tuple[int, int, int], force: bool = False) -> Iterator[None]:
    """``(timeout, retries, backoff factor)`` for MLflow's HTTP requests in the block.

    Each is set only where the user has not set its ``MLFLOW_HTTP_REQUEST_*`` variable (always
    with ``force``; an enclosing block's own values are replaced); urllib3's per-retry warnings
    are hidden meanwhile (the failure itself is reported in one line).
    """
    wanted = dict(zip((TIMEOUT_ENV, RETRIES_ENV, BACKOFF_ENV), limits, strict=True))
    saved = {key: os.environ.get(key) for key in wanted}
    ours = dict(_OURS)
    pool_log = logging.getLogger("urllib3.connectionpool")
    level = pool_log.level
    for key, limit in wanted.items():
        if force or not _user_set(key):
            os.environ[key] = _OURS[key] = str(limit)
    pool_log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        pool_log.setLevel(level)
        _OURS.clear()
        _OURS.update(ours)
        for key, before in saved.items():
            if before is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = before
