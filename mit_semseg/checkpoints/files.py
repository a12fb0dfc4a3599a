"""Weight and state files on disk: crash-safe writing and safe reading.

Every file is written to a temporary file in the same folder, flushed to disk
and renamed over the final name (``os.replace`` is atomic), so a crash never
leaves a truncated file under a final name; at worst a ``.NAME.*.tmp`` file
is left, which :func:`remove_stale_temporaries` deletes. Everything is read
with ``torch.load(..., weights_only=True)``: the files hold only tensors,
numbers, strings, lists and dicts. What a training run writes, and when, is
:mod:`mit_semseg.training.state`'s business.
"""
from __future__ import annotations

import contextlib
import glob
import os
import tempfile
from typing import Any, Callable

import torch

from ..errors import MitSemsegError
from .released import RELEASED_MODELS

__all__ = ["CheckpointError", "CheckpointNotFoundError", "atomic_save", "atomic_write_text",
           "remove_stale_temporaries", "load_file", "checkpoint_paths"]


class CheckpointError(MitSemsegError, RuntimeError):
    """A checkpoint file is missing, unreadable or does not belong to this run."""


# ----------------------------------------------------------------------------- writing

def _atomic_write(path: str, write: Callable[[Any], None]) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        # mkstemp makes the file private (0600); give it the mode a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(folder)


def _fsync_dir(folder: str) -> None:
    """Make the rename itself durable (not possible on every OS / file system)."""
    try:
        dir_fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def atomic_save(obj: Any, path: str) -> None:
    """``torch.save(obj, path)`` that either fully replaces ``path`` or leaves it untouched."""
    _atomic_write(path, lambda fh: torch.save(obj, fh))


def atomic_write_text(text: str, path: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    _atomic_write(path, lambda fh: fh.write(text.encode("utf-8")))


def remove_stale_temporaries(directory: str) -> list[str]:
    """Delete temporary files left in ``directory`` by a write that was killed; return them."""
    removed = []
    for path in glob.glob(os.path.join(glob.escape(directory), ".*.tmp")):
        with contextlib.suppress(OSError):
            os.unlink(path)
            removed.append(path)
    return removed


# ----------------------------------------------------------------------------- reading

def load_file(path: str, what: str = "checkpoint", map_location: Any = "cpu") -> Any:
    """``torch.load(path, weights_only=True)`` (on the CPU by default).

    Every failure is a CheckpointError with a one-line message naming the file:
    missing, damaged (truncated or corrupt), or holding more than tensors.
    """
    if not os.path.isfile(path):
        raise CheckpointError(f"{what} not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated, corrupt or not written by torch.save
        raise CheckpointError(_unreadable_message(path, what, exc)) from exc


def _unreadable_message(path: str, what: str, exc: Exception) -> str:
    text = str(exc)
    if "Weights only load failed" in text and "Unsupported global" in text:
        return (f"{what} {path} holds Python objects besides tensors and cannot be loaded "
                f"safely (torch.load weights_only=True); re-save it as a plain state dict")
    size = os.path.getsize(path)
    return (f"{what} {path} is damaged (truncated or corrupt, {size} bytes; "
            f"{type(exc).__name__}); download or copy it again")


# ----------------------------------------------------------------------------- run folders

class CheckpointNotFoundError(MitSemsegError, FileNotFoundError):
    """Model weights are missing; the message names the paths and how to get them."""


def checkpoint_paths(directory: str, checkpoint: str) -> tuple[str, str]:
    """``directory/encoder_<checkpoint>`` and ``directory/decoder_<checkpoint>``;
    raises CheckpointNotFoundError naming what is missing and how to get it."""
    enc = os.path.join(directory, "encoder_" + checkpoint)
    dec = os.path.join(directory, "decoder_" + checkpoint)
    missing = [p for p in (enc, dec) if not os.path.isfile(p)]
    if missing:
        name = os.path.basename(os.path.normpath(directory))
        hint = (f"fetch the released model: python3 -m mit_semseg pretrained {name}"
                if name in RELEASED_MODELS else
                "train one first (python3 train.py --cfg <config>), or fetch a released model "
                "(python3 -m mit_semseg pretrained --list)")
        raise CheckpointNotFoundError(
            f"checkpoint not found: {' and '.join(missing)}. Set DIR and the checkpoint name "
            f"(VAL.checkpoint / TEST.checkpoint) to an existing checkpoint, or {hint}")
    return enc, dec
