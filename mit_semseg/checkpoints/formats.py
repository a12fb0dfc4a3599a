"""Weight files as PyTorch ``.pth`` or ``.safetensors``, and conversion between them.

A weights file holds a flat state dict: parameter and buffer names mapped to
tensors. ``.pth`` files are read with ``torch.load(weights_only=True)`` (no
code from the file runs); ``.safetensors`` files need the optional
``safetensors`` package (``pip install -e ".[hub]"``).

Converting keeps every key, its order, dtype, shape and bits (integer buffers
such as BatchNorm's ``num_batches_tracked`` included): ``.pth`` ->
``.safetensors`` -> ``.pth`` gives ``torch.equal`` tensors. The key order is
stored in the safetensors metadata (``mit_semseg.key_order``), since the format
itself sorts the tensors. Tensors that share memory, or are not contiguous, are
copied before saving as safetensors, which refuses them; their values do not change.

Writing is reproducible: the same state dict written twice, in one process or
two, gives the same bytes in either format, so the ``SHA256SUMS`` of a folder
does not change either. (The safetensors library writes its ``__metadata__``
entries in a random order per process, safetensors issue #584; they are put in
sorted order before the file takes its name. A ``.pth`` file is written through
a stream, so no temporary file name ends up inside its zip archive.)
"""
from __future__ import annotations

import json
import os
import struct
from typing import Any, Callable, Mapping

import torch

from ..errors import MitSemsegError
from ._atomic import atomic_write
from .ledger import read_sums, record_sha256, sha256_file, verify_file

__all__ = ["FormatError", "TORCH_SUFFIXES", "SAFETENSORS_SUFFIX", "WEIGHT_FORMATS",
           "read_weights", "read_raw", "write_weights", "convert", "twin_path"]

TORCH_SUFFIXES = (".pth", ".pt", ".bin")
SAFETENSORS_SUFFIX = ".safetensors"
_ORDER_KEY = "mit_semseg.key_order"
_INSTALL = 'pip install -e ".[hub]" (or pip install safetensors)'
# format name (TRAIN.save_format) -> file suffix
WEIGHT_FORMATS = {"pth": ".pth", "safetensors": SAFETENSORS_SUFFIX}


class FormatError(MitSemsegError, RuntimeError):
    """A weights file cannot be read or written; the message (one line) names the file."""


def read_weights(path: str, *, verify: bool = True) -> dict[str, torch.Tensor]:
    """The state dict in ``path`` (``.pth`` or ``.safetensors``, told by its content),
    with CPU tensors in the file's key order.

    With ``verify`` the file is first checked against its entry in the ``SHA256SUMS``
    of its folder, if it has one (HashMismatchError, the file renamed aside, when
    wrong). Raises FormatError when the file is missing, damaged, of an unknown
    format, or holds anything but a flat mapping of names to tensors.
    """
    return _check_state(read_raw(path, verify=verify), path)


def read_raw(path: str, *, verify: bool = True, map_location: Any = "cpu") -> Any:
    """What ``path`` holds, checked as :func:`read_weights` checks it but not required
    to be a flat state dict: a safetensors file's tensors, or the object a
    ``torch.save`` file holds (tensors, numbers, strings, lists and dicts only;
    e.g. ``{"state_dict": ...}``). ``map_location``: as in ``torch.load``."""
    if not os.path.isfile(path):
        raise FormatError(f"weights file not found: {path}")
    if verify:
        verify_file(path)
    if _looks_like_safetensors(path):
        state = _read_safetensors(path)
        if map_location not in (None, "cpu") and not callable(map_location):
            state = {k: v.to(map_location) for k, v in state.items()}
        return state
    if path.lower().endswith(SAFETENSORS_SUFFIX):
        raise FormatError(f"{path} is not a safetensors file (damaged, truncated or of "
                          f"another format)")
    return _read_torch(path, map_location)


def twin_path(path: str) -> str | None:
    """The same weights in the other format: ``x.pth`` <-> ``x.safetensors``
    (None for other names)."""
    stem, suffix = os.path.splitext(path)
    if suffix.lower() == SAFETENSORS_SUFFIX:
        return stem + ".pth"
    if suffix.lower() == ".pth":
        return stem + SAFETENSORS_SUFFIX
    return None


def write_weights(state: Mapping[str, torch.Tensor], path: str) -> str:
    """Write ``state`` to ``path`` in the format its suffix names (``.safetensors``, or
    ``.pth`` / ``.pt`` / ``.bin`` for ``torch.save``); returns ``path``.

    The write is atomic (temporary file in the same folder, then ``os.replace``):
    ``path`` is either the complete new file or untouched. When the folder's
    ``SHA256SUMS`` lists ``path``, its entry is updated to the new content.
    """
    state = _check_state(state, path)
    lower = path.lower()
    if lower.endswith(SAFETENSORS_SUFFIX):
        save_file = _safetensors_api(path)[1]
        tensors = _safetensors_ready(state, path)
        metadata = {"format": "pt", _ORDER_KEY: json.dumps(list(state))}

        def write_safetensors(tmp: str) -> None:
            save_file(tensors, tmp, metadata=metadata)
            _sort_metadata(tmp)
        _atomic_write(path, write_safetensors)
    elif lower.endswith(TORCH_SUFFIXES):
        # Through a stream: torch.save(obj, path) names the archive inside the file
        # after the (random) temporary path, so the bytes would differ on every save.
        def write_torch(tmp: str) -> None:
            with open(tmp, "wb") as fh:
                torch.save(state, fh)
        _atomic_write(path, write_torch)
    else:
        raise FormatError(f"cannot tell the weights format from the name {path}: use "
                          f"{SAFETENSORS_SUFFIX} or {', '.join(TORCH_SUFFIXES)}")
    folder, name = os.path.split(os.path.abspath(path))
    if name in read_sums(folder):
        record_sha256(folder, name, sha256_file(path))
    return path


def convert(src: str, dst: str) -> str:
    """Rewrite the weights in ``src`` into ``dst``, formats told by the names (either
    way between ``.pth`` and ``.safetensors``); returns ``dst``. ``src`` is verified
    as by :func:`read_weights`."""
    return write_weights(read_weights(src), dst)


# ----------------------------------------------------------------------------- reading

def _looks_like_safetensors(path: str) -> bool:
    """A safetensors file starts with the 8-byte length of its JSON header, then ``{``."""
    with open(path, "rb") as fh:
        head = fh.read(9)
    if len(head) < 9 or head[8:9] != b"{":
        return False
    header_len = struct.unpack("<Q", head[:8])[0]
    return 8 + header_len <= os.path.getsize(path)


def _read_torch(path: str, map_location: Any = "cpu") -> Any:
    try:
        return torch.load(path, map_location=map_location or "cpu", weights_only=True)
    except Exception as exc:  # truncated, corrupt, not written by torch.save, or unsafe
        text = str(exc)
        if "Weights only load failed" in text and "Unsupported global" in text:
            raise FormatError(f"{path} holds Python objects besides tensors and cannot be loaded "
                              f"safely (torch.load weights_only=True)") from None
        raise FormatError(f"{path} is damaged or not a readable weights file: neither "
                          f".safetensors nor a torch.save file ({os.path.getsize(path)} bytes; "
                          f"{type(exc).__name__}); download or copy it again") from None


def _read_safetensors(path: str) -> dict[str, torch.Tensor]:
    safe_open = _safetensors_api(path)[0]
    try:
        with safe_open(path, framework="pt", device="cpu") as fh:
            keys = list(fh.keys())
            order = json.loads((fh.metadata() or {}).get(_ORDER_KEY, "null"))
            if isinstance(order, list) and sorted(order) == sorted(keys):
                keys = order
            return {key: fh.get_tensor(key) for key in keys}
    except Exception as exc:  # the library's own error type, or a bad header / metadata
        first_line = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise FormatError(f"{path} is a damaged safetensors file ({first_line})") from None


def _check_state(state: Any, path: str) -> dict[str, torch.Tensor]:
    if not isinstance(state, Mapping):
        raise FormatError(f"{path} does not hold a state dict (found {type(state).__name__})")
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise FormatError(f"{path} is not a flat state dict of tensors: key {key!r} holds "
                              f"{type(value).__name__}")
    return state if isinstance(state, dict) else dict(state)


def _safetensors_api(path: str) -> tuple[Callable, Callable]:
    try:
        from safetensors import safe_open
        from safetensors.torch import save_file
    except ImportError:
        raise FormatError(f"{path}: .safetensors files need the safetensors package: "
                          f"{_INSTALL}") from None
    return safe_open, save_file


# ----------------------------------------------------------------------------- writing

def _safetensors_ready(state: Mapping[str, torch.Tensor], path: str) -> dict[str, torch.Tensor]:
    """CPU tensors that own their memory: a tensor sharing storage with an earlier
    key, or not contiguous, is copied (same values, same dtype)."""
    ready = {}
    seen: set[int] = set()
    for key, tensor in state.items():
        tensor = tensor.detach().cpu()
        if tensor.layout != torch.strided:
            raise FormatError(f"cannot write {path}: {key} is a {tensor.layout} tensor, "
                              f"which safetensors cannot store")
        ptr = tensor.untyped_storage().data_ptr()
        if not tensor.is_contiguous() or (tensor.numel() and ptr in seen):
            tensor = tensor.clone(memory_format=torch.contiguous_format)
        if tensor.numel():
            seen.add(tensor.untyped_storage().data_ptr())
        ready[key] = tensor
    return ready


def _sort_metadata(path: str) -> None:
    """Rewrite the ``__metadata__`` entries of safetensors file ``path`` in sorted order,
    in place: the header keeps its length (padded with spaces, as the format allows),
    so no tensor moves. Everything else in the header keeps its order."""
    with open(path, "r+b") as fh:
        size = struct.unpack("<Q", fh.read(8))[0]
        raw = fh.read(size)
        header = json.loads(raw)
        metadata = header.get("__metadata__")
        if not metadata:
            return
        header["__metadata__"] = dict(sorted(metadata.items()))
        text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        if len(text) > size:  # only if the library escaped strings differently from json
            raise FormatError(f"cannot write {path}: its safetensors header grew from {size} "
                              f"to {len(text)} bytes when its metadata was sorted")
        fh.seek(8)
        fh.write(text.ljust(size, b" "))


def _atomic_write(path: str, write: Callable[[str], None]) -> None:
    """``_atomic.atomic_write`` with the format library's failures as FormatError."""
    def checked(tmp: str) -> None:
        try:
            write(tmp)
        except (FormatError, OSError):
            raise
        except Exception as exc:  # e.g. a dtype the format cannot store
            raise FormatError(f"cannot write {path}: {type(exc).__name__}: "
                              f"{(str(exc).splitlines() or [''])[0]}") from exc
    atomic_write(path, checked)
