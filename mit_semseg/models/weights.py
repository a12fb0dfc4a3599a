"""Reading weight files: strict state-dict loading and the ImageNet cache.

Weight files are ``.pth`` (``torch.save``, read with ``weights_only=True``) or
``.safetensors``, told apart by their content; a file listed in its folder's
``SHA256SUMS`` is checked against it first. Every load is strict. Missing,
unexpected or wrongly shaped keys raise ``WeightsError`` naming them; nothing
is skipped silently.
"""
from __future__ import annotations

import os
import sys
from typing import Callable, Iterable, Mapping, Sequence

import torch
import torch.nn as nn

from ..checkpoints.download import DownloadError, fetch_url
from ..checkpoints.formats import FormatError, read_raw
from ..errors import MitSemsegError

DEFAULT_PRETRAINED_DIR = "./pretrained"


class WeightsError(MitSemsegError, RuntimeError):
    """A weights file does not fit the model it is loaded into."""


def read_state_dict(path: str, map_location=None) -> dict[str, torch.Tensor]:
    """Read a state dict from a ``.pth`` (safely, ``weights_only=True``) or
    ``.safetensors`` file (see ``checkpoints.formats.read_raw``), checked against
    its folder's ``SHA256SUMS`` if listed there (``HashMismatchError`` if wrong).

    Tensors are loaded onto the CPU unless ``map_location`` (as in ``torch.load``) says otherwise.

    A file holding ``{"state_dict": ...}`` or ``{"model": ...}`` is unwrapped and a
    ``module.`` prefix (left by DataParallel / DDP) is removed.
    """
    try:
        obj = read_raw(path, map_location=map_location or "cpu")
    except FormatError as exc:  # missing, damaged, or more than tensors: one-line message
        raise WeightsError(str(exc)) from None
    for wrapper in ("state_dict", "model"):
        if isinstance(obj, Mapping) and wrapper in obj and isinstance(obj[wrapper], Mapping):
            obj = obj[wrapper]
    if not isinstance(obj, Mapping):
        raise WeightsError(f"{path} does not hold a state dict (found {type(obj).__name__})")
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return dict(obj)


def load_weights(module: nn.Module, state: Mapping[str, torch.Tensor], source: str,
                 skip: Callable[[str], bool] | None = None,
                 allow_unexpected: bool = False) -> list[str]:
    """Copy ``state`` into ``module`` strictly.

    Keys for which ``skip(key)`` is true are left at their initial values (the
    caller says so to the user); the skipped keys are returned. With
    ``allow_unexpected`` extra keys in ``state`` are reported on stderr instead of
    raising (ImageNet files carry classifier heads the encoders do not have).
    """
    own = module.state_dict()
    skipped = [k for k in own if skip is not None and skip(k)]
    missing = [k for k in own if k not in state and k not in skipped]
    unexpected = [k for k in state if k not in own]
    wrong_shape = [(k, tuple(state[k].shape), tuple(own[k].shape)) for k in own
                   if k in state and k not in skipped and state[k].shape != own[k].shape]
    problems = []
    if missing:
        problems.append(f"missing keys: {_short(missing)}")
    if unexpected and not allow_unexpected:
        problems.append(f"unexpected keys: {_short(unexpected)}")
    if wrong_shape:
        problems.append("wrong shapes: " + _short(
            [f"{k} (file {a}, model {b})" for k, a, b in wrong_shape]))
    if problems:
        raise WeightsError(f"{source} does not fit {type(module).__name__}: " + "; ".join(problems))
    if unexpected:
        print(f"[mit_semseg] {source}: not used by {type(module).__name__}: {_short(unexpected)}",
              file=sys.stderr)
    kept = {k: v for k, v in state.items() if k in own and k not in skipped}
    module.load_state_dict(kept, strict=not skipped)
    return skipped


def load_url(url: str, model_dir: str = DEFAULT_PRETRAINED_DIR,
             map_location=None, *, mirrors: str | Sequence[str] = ()) -> dict[str, torch.Tensor]:
    """Return the state dict at ``url``, downloading it once into ``model_dir``.

    The download resumes when cut and falls back to the mirrors of
    ``MIT_SEMSEG_MIRRORS`` (read at this call), then ``mirrors`` (the config's
    ``MODEL.mirrors``), which hold it as ``<folder>/<file>``, the last two parts of
    the URL; its SHA-256 is recorded in ``model_dir/SHA256SUMS`` and checked on
    later loads. Offline, the error names the URL, every source tried and the path
    to place the file at.
    """
    cached = os.path.join(model_dir, url.rsplit("/", 1)[-1])
    try:
        fetch_url(url, cached, config_mirrors=mirrors)
    except DownloadError as exc:
        tried = "; ".join(str(e).splitlines()[0] for _, e in exc.failures) or str(exc)
        raise WeightsError(
            f"cannot download pretrained weights {url} ({tried}). Download the file by other "
            f"means and place it at {os.path.abspath(cached)}, point MIT_SEMSEG_MIRRORS at a "
            f"copy, or start from random init with MODEL.pretrained False "
            f"(pretrained=False).") from None
    return read_state_dict(cached, map_location)


_BN_BOOKKEEPING = ("num_batches_tracked", "_tmp_running_mean", "_tmp_running_var",
                   "_running_iter")


def load_pretrained(model: nn.Module, url: str, model_dir: str = DEFAULT_PRETRAINED_DIR, *,
                    mirrors: str | Sequence[str] = ()) -> None:
    """Load the ImageNet weights at ``url`` (cached in ``model_dir``; downloaded as
    :func:`load_url` says, ``mirrors`` being the config's ``MODEL.mirrors``) into ``model``.

    Files from 2018 may lack BatchNorm bookkeeping buffers (they keep their
    initial values) and carry classifier heads an encoder does not use
    (reported on stderr). Any other missing or mis-shaped key is an error.
    """
    state = load_url(url, model_dir, mirrors=mirrors)

    def absent_bookkeeping(key: str) -> bool:
        return key not in state and key.endswith(_BN_BOOKKEEPING)

    load_weights(model, state, url, skip=absent_bookkeeping, allow_unexpected=True)


def _short(keys: Iterable[str], limit: int = 12) -> str:
    keys = list(keys)
    head = ", ".join(keys[:limit])
    return head + (f" ... (+{len(keys) - limit} more)" if len(keys) > limit else "")
