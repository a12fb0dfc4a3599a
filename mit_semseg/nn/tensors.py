"""Tensor helpers of the Variable era, with today's meaning.

``Variable`` is ``torch.Tensor`` since PyTorch 0.4: ``as_variable`` returns
tensors, ``mark_volatile`` (no autograd history) returns detached tensors.
All three walk nested lists, tuples and dicts; strings are leaves.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.autograd import Variable  # noqa: F401 (as the original)

__all__ = ["as_variable", "as_numpy", "mark_volatile"]


def _walk(obj: Any, leaf) -> Any:
    """Apply ``leaf`` to every non-container in ``obj``; sequences come back as lists."""
    if torch.is_tensor(obj) or isinstance(obj, (str, bytes, np.ndarray)):
        return leaf(obj)
    if isinstance(obj, Mapping):
        return {key: _walk(value, leaf) for key, value in obj.items()}
    if isinstance(obj, Sequence):
        return [_walk(value, leaf) for value in obj]
    return leaf(obj)


def as_numpy(obj: Any) -> Any:
    """Tensors (detached, on the CPU) and other leaves as numpy arrays; lists and dicts kept."""
    return _walk(obj, lambda x: x.detach().cpu().numpy() if torch.is_tensor(x) else np.array(x))


def as_variable(obj: Any) -> Any:
    """Tensors as they are, other leaves through ``torch.as_tensor``; lists and dicts kept."""
    return _walk(obj, lambda x: x if torch.is_tensor(x) else torch.as_tensor(x))


def mark_volatile(obj: Any) -> Any:
    """Tensors without autograd history (``detach()``); other leaves unchanged."""
    return _walk(obj, lambda x: x.detach() if torch.is_tensor(x) else x)
