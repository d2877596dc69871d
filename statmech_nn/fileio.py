"""Atomic file writes: a reader sees the old file or the complete new one, never a partial write.

The one home of the temp-file / fsync / rename pattern used for checkpoints, configs, netCDF
files and stores. Files get the permissions an ordinary ``open`` would give (``0o666`` less the
umask), not ``mkstemp``'s owner-only ``0o600``, so a team's shared artifact store can read them.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

TMP_SUFFIX = ".tmp"
"""Temporary files are hidden: ``.{name}.{random}.tmp`` beside their target."""


def current_umask() -> int:
    """The process umask (read without changing it for longer than one call)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def default_file_mode() -> int:
    """``0o666`` less the umask: the mode ``open(path, "w")`` would create a file with."""
    return 0o666 & ~current_umask()


def fsync_dir(folder: str | os.PathLike) -> None:
    """Flush a folder's entries (the rename) to disk; a no-op where folders cannot be opened."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a hidden temporary path beside ``path``; on success it is renamed onto ``path``.

    The writer inside the block writes the temporary file by name (e.g. ``ds.to_netcdf(tmp)``).
    On any error the temporary file is removed and ``path`` is left as it was; an ``OSError``
    that names no file (``ENOSPC`` from a write) is raised again naming ``path``.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=TMP_SUFFIX)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, default_file_mode())
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if exc.filename is None and exc.errno is not None:
            raise OSError(exc.errno, exc.strerror or str(exc), str(target)) from exc
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(target.parent)


def atomic_write(path: str | os.PathLike, write: Callable[[Any], object], mode: str = "wb") -> Path:
    """Write ``path`` atomically through ``write(file_object)`` (``mode`` ``"wb"`` or ``"w"``)."""
    with atomic_path(path) as tmp:
        encoding = None if "b" in mode else "utf-8"
        with open(tmp, mode, encoding=encoding) as fh:
            write(fh)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write a UTF-8 text file atomically."""
    return atomic_write(path, lambda fh: fh.write(text), mode="w")


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete hidden ``.*.tmp`` files left in ``folder`` by a killed writer; returns them."""
    removed = []
    with contextlib.suppress(FileNotFoundError):
        for entry in Path(folder).iterdir():
            if entry.name.startswith(".") and entry.name.endswith(TMP_SUFFIX) and entry.is_file():
                entry.unlink(missing_ok=True)
                removed.append(entry)
    return removed


@contextlib.contextmanager
def exclusive_lock(path: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``path`` (created if missing) for the block.

    Serialises work that several processes may start at once on one machine or one shared
    POSIX file system (e.g. creating and migrating a new SQLite store). Where ``fcntl`` does not
    exist (Windows) the block runs unlocked.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    lock = Path(path)
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
