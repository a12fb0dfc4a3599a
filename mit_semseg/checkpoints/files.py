"""Weight and state files on disk: crash-safe writing and safe reading.

Every file is written to a temporary file in the same folder, flushed to disk
and renamed over the final name (``os.replace`` is atomic), so a crash never
leaves a truncated file under a final name; at worst a ``.NAME.*.tmp`` file
is left, which :func:`remove_stale_temporaries` deletes. Everything is read
with ``torch.load(..., weights_only=True)``: the files hold only tensors,
numbers, strings, lists and dicts. What a training run writes, and when, is
:mod:`mit_semseg.training.state`'s business. A file listed in its folder's
``SHA256SUMS`` (a downloaded model) keeps a true entry when it is overwritten.

Where the weights of a run are (:func:`checkpoint_paths`): ``DIR/encoder_<name>``
and ``DIR/decoder_<name>``; a missing ``.pth`` file is looked for as
``.safetensors`` and the other way round, and a model folder
(``save_pretrained``: ``config.yaml``, ``encoder.safetensors``,
``decoder.safetensors``) used as ``DIR`` gives its two files.
"""
from __future__ import annotations

import contextlib
import glob
import os
from typing import Any

import torch

from ..errors import MitSemsegError
from ._atomic import atomic_write_stream
from .formats import twin_path
from .ledger import update_if_listed
from .released import RELEASED_MODELS

__all__ = ["CheckpointError", "CheckpointNotFoundError", "atomic_save", "atomic_write_text",
           "remove_stale_temporaries", "load_file", "checkpoint_paths", "find_weights",
           "is_model_folder", "MODEL_CONFIG", "MODEL_WEIGHTS"]

# The files of a model folder (save_pretrained / from_pretrained).
MODEL_CONFIG = "config.yaml"
MODEL_WEIGHTS = {"encoder": "encoder.safetensors", "decoder": "decoder.safetensors"}


class CheckpointError(MitSemsegError, RuntimeError):
    """A checkpoint file is missing, unreadable or does not belong to this run."""


# ----------------------------------------------------------------------------- writing

def atomic_save(obj: Any, path: str) -> None:
    """``torch.save(obj, path)`` that either fully replaces ``path`` or leaves it untouched.

    When the folder's ``SHA256SUMS`` lists ``path`` (a downloaded model being
    overwritten, e.g. by fine-tuning in its folder), the entry is updated to the new
    content; should that fail, it is dropped, so later checks never refuse the file.
    """
    atomic_write_stream(path, lambda fh: torch.save(obj, fh))
    update_if_listed(path)


def atomic_write_text(text: str, path: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_stream(path, lambda fh: fh.write(text.encode("utf-8")))


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
    """Model weights are missing; the message names the paths and how to get them
    (``missing``: those paths, where known)."""
    missing: list[str] = []


def find_weights(path: str) -> str | None:
    """``path`` if it is a file, else its twin in the other format (``.pth`` <->
    ``.safetensors``) if that is one, else None."""
    if os.path.isfile(path):
        return path
    twin = twin_path(path)
    return twin if twin is not None and os.path.isfile(twin) else None


def is_model_folder(directory: str) -> bool:
    """True if ``directory`` holds a model folder's config and two weight files."""
    return all(os.path.isfile(os.path.join(directory, name))
               for name in (MODEL_CONFIG, *MODEL_WEIGHTS.values()))


def checkpoint_paths(directory: str, checkpoint: str) -> tuple[str, str]:
    """The encoder and decoder weights of ``directory`` for ``checkpoint``:
    ``directory/encoder_<checkpoint>`` and ``directory/decoder_<checkpoint>``, each
    found in either format (:func:`find_weights`); failing that, the two files of a
    model folder. Raises CheckpointNotFoundError naming what is missing and how to get it."""
    wanted = [os.path.join(directory, f"{part}_{checkpoint}") for part in ("encoder", "decoder")]
    found = [find_weights(p) for p in wanted]
    if None not in found:
        return found[0], found[1]
    if is_model_folder(directory):
        return (os.path.join(directory, MODEL_WEIGHTS["encoder"]),
                os.path.join(directory, MODEL_WEIGHTS["decoder"]))
    raise _not_found([p for p, f in zip(wanted, found) if f is None], directory)


def _not_found(missing: list[str], directory: str) -> CheckpointNotFoundError:
    # Built here, not in the raising frame: a local holding the error would tie the
    # traceback into a cycle that keeps the callers' frames (and their files) alive.
    name = os.path.basename(os.path.normpath(directory))
    hint = (f"fetch the released model: python3 -m mit_semseg pretrained {name}"
            if name in RELEASED_MODELS else
            "train one first (python3 train.py --cfg <config>), or fetch a released model "
            "(python3 -m mit_semseg pretrained --list)")
    twins = [t for t in map(twin_path, missing) if t]
    also = f" (nor {' and '.join(os.path.basename(t) for t in twins)})" if twins else ""
    error = CheckpointNotFoundError(
        f"checkpoint not found: {' and '.join(missing)}{also}. Set DIR and the checkpoint name "
        f"(VAL.checkpoint / TEST.checkpoint) to an existing checkpoint, or {hint}")
    error.missing = missing
    return error
