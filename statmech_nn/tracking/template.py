"""The cached empty SQLite store: running MLflow's migrations takes seconds, copying a file not."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

from statmech_nn.fileio import TMP_SUFFIX, atomic_path, default_file_mode


def template_path() -> Path:
    """The cached empty store: ``$STATMECH_CACHE`` or ``~/.cache/statmech-nn``, per version."""
    import mlflow
    import sqlalchemy

    base = os.environ.get("STATMECH_CACHE")
    if not base:
        base = str(Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "statmech-nn")
    return Path(base) / f"mlflow-{mlflow.__version__}-sqlalchemy-{sqlalchemy.__version__}.db"


def copy_template(db: Path) -> bool:
    """Create ``db`` as a copy of the template, unless ``db`` exists; whether it was copied.

    The copy is linked into place (not renamed), so a store another process created meanwhile
    is never overwritten.
    """
    try:
        template = template_path()
        if not template.is_file():
            return False
        fd, tmp = tempfile.mkstemp(dir=db.parent, prefix=f".{db.name}.", suffix=TMP_SUFFIX)
        os.close(fd)
        try:
            shutil.copyfile(template, tmp)
            os.chmod(tmp, default_file_mode())
            os.link(tmp, db)
        finally:
            os.unlink(tmp)
    except OSError:  # FileExistsError included: someone else created the store first
        return False
    return True


def save_template(db: Path) -> None:
    """Keep a copy of the freshly migrated, still empty ``db`` as the template (best effort)."""
    with contextlib.suppress(OSError):
        template = template_path()
        if template.is_file():
            return
        with atomic_path(template) as tmp:
            shutil.copyfile(db, tmp)


def drop_template() -> None:
    """Delete a template that turned out unusable."""
    with contextlib.suppress(OSError):
        template_path().unlink()
