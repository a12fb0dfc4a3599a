"""Checkpoint files of a training run: their names, the training state, random states.

Files in the run folder (``cfg.DIR``) after epoch N, as the original toolkit:

* ``encoder_epoch_N.pth`` / ``decoder_epoch_N.pth``: plain state dicts (CPU
  tensors) with the model's own keys; load them with ``ModelBuilder``.
* ``history_epoch_N.pth``: ``{'train': {'epoch': [...], 'loss': [...], 'acc': [...]}}``.

and, new, what an exact continuation needs:

* ``state_epoch_N.pth``: both optimizer states, the global iteration, the
  history, the random-generator states of every rank and the run settings
  that shape the data stream. The weights are the epoch-N encoder/decoder files.
* ``state_iter_G.pth`` (``TRAIN.checkpoint_every``): the same after global
  iteration G inside an epoch, with the weights inside (keys ``encoder`` and
  ``decoder``). Only the newest one is kept.

Both hold, under ``hooks``, what hooks keep across a resume (``TRAIN.ema_decay``:
the moving average, key ``ema``, also written as ``{encoder,decoder}_ema_epoch_N.pth``).

Writing and reading go through :mod:`mit_semseg.checkpoints.files` (atomic,
``weights_only``).
"""
from __future__ import annotations

import os
import random
import re
from typing import Any, Mapping

import numpy as np
import torch

from ..checkpoints.files import CheckpointError, load_file

__all__ = ["STATE_VERSION", "epoch_paths", "iter_state_path", "load_training_state",
           "list_states", "latest_state", "capture_rng_state", "restore_rng_state"]

STATE_VERSION = 1

_EPOCH_STATE = re.compile(r"^state_epoch_(\d+)\.pth$")
_ITER_STATE = re.compile(r"^state_iter_(\d+)\.pth$")


# ----------------------------------------------------------------------------- names

def epoch_paths(directory: str, epoch: int) -> dict[str, str]:
    """Paths of the epoch-``epoch`` files: keys encoder, decoder, history, state."""
    return {kind: os.path.join(directory, f"{kind}_epoch_{epoch}.pth")
            for kind in ("encoder", "decoder", "history", "state")}


def iter_state_path(directory: str, global_iter: int) -> str:
    """Path of the mid-epoch state file written after ``global_iter`` iterations."""
    return os.path.join(directory, f"state_iter_{global_iter}.pth")


def load_training_state(path: str) -> dict:
    """Read a ``state_*.pth`` file and check that it is one."""
    state = load_file(path, "training state")
    if not isinstance(state, Mapping) or "global_iter" not in state or "optimizers" not in state:
        raise CheckpointError(f"{path} is not a training-state file (state_epoch_N.pth or "
                              f"state_iter_G.pth written by mit_semseg's train.py)")
    if state.get("version", 0) > STATE_VERSION:
        raise CheckpointError(f"{path} was written by a newer mit_semseg (state version "
                              f"{state['version']}, this one reads {STATE_VERSION})")
    return dict(state)


def list_states(directory: str, epoch_iters: int) -> list[tuple[int, str]]:
    """``(global iteration, path)`` of every state file in ``directory``, oldest first.

    An epoch file counts as ``N * epoch_iters`` iterations; at equal progress the
    epoch file comes last (it has the separate weight files next to it).
    """
    found = []
    if not os.path.isdir(directory):
        return found
    for name in os.listdir(directory):
        if m := _EPOCH_STATE.match(name):
            found.append((int(m.group(1)) * epoch_iters, 1, os.path.join(directory, name)))
        elif m := _ITER_STATE.match(name):
            found.append((int(m.group(1)), 0, os.path.join(directory, name)))
    return [(g, path) for g, _, path in sorted(found)]


def latest_state(directory: str, epoch_iters: int) -> str | None:
    """The state file in ``directory`` that is furthest along, or None."""
    states = list_states(directory, epoch_iters)
    return states[-1][1] if states else None


# ----------------------------------------------------------------------------- random state

def capture_rng_state() -> dict[str, Any]:
    """Python, NumPy, torch (and CUDA, when initialised) generator states, as tensors
    and plain numbers so that ``weights_only`` loading accepts them."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": {"version": version, "internal": torch.tensor(internal, dtype=torch.int64),
                   "gauss": gauss},
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    py = state["python"]
    random.setstate((int(py["version"]), tuple(int(v) for v in py["internal"].tolist()),
                     py["gauss"]))
    npy = state["numpy"]
    np.random.set_state((npy["kind"], npy["keys"].numpy().astype(np.uint32), int(npy["pos"]),
                         int(npy["has_gauss"]), float(npy["cached_gaussian"])))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = list(state["cuda"])
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
        else:  # other GPUs than when saved: restore those that exist
            for index, cuda_state in enumerate(cuda_states[:torch.cuda.device_count()]):
                torch.cuda.set_rng_state(cuda_state, index)
