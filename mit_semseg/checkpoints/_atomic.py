"""Crash-safe file writing, shared by every writer of this package: the data goes
to a temporary file in the destination's folder, is flushed to disk, and is
renamed over the final name (``os.replace`` is atomic), so a crash never leaves
a truncated file under a final name; at worst a ``.NAME.*.tmp`` file is left."""
from __future__ import annotations

import contextlib
import os
import tempfile
from typing import IO, Any, Callable

__all__ = ["atomic_write", "atomic_write_stream", "fsync_dir"]


def fsync_dir(folder: str) -> None:
    """Make a rename in ``folder`` durable (not possible on every OS / file system)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str, write: Callable[[str], Any]) -> None:
    """``write(tmp)`` writes a temporary path beside ``path``, which then replaces
    ``path`` whole; on any failure ``path`` is untouched and the temporary removed."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        # mkstemp makes the file private (0600); give it the mode a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(folder)


def atomic_write_stream(path: str, write: Callable[[IO[bytes]], Any]) -> None:
    """``atomic_write`` for a writer of an open binary file."""
    def to_path(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            write(fh)
    atomic_write(path, to_path)
