"""``TorchTestCase``: ``unittest.TestCase`` with a closeness check for tensors (re-exported at the old path ``mit_semseg.lib.nn.modules.unittest``)."""
from __future__ import annotations

import unittest

import numpy as np
import torch
from torch.autograd import Variable  # noqa: F401 (as the original)

from . import tensors as th

__all__ = ["TorchTestCase", "as_numpy"]


def as_numpy(v: torch.Tensor) -> np.ndarray:
    """``v`` (detached, on the CPU) as a numpy array."""
    return th.as_numpy(v)


class TorchTestCase(unittest.TestCase):
    """Adds :meth:`assertTensorClose`."""

    def assertTensorClose(self, a: torch.Tensor, b: torch.Tensor, atol: float = 1e-3,
                          rtol: float = 1e-3) -> None:
        """Fail unless ``|a - b| <= atol`` elementwise (``rtol`` only shapes the message)."""
        x, y = as_numpy(a), as_numpy(b)
        diff = np.abs(x - y)
        relative = diff / np.maximum(np.abs(x), 1e-5)
        self.assertTrue(np.allclose(x, y, atol=atol),
                        f"tensors differ: max abs diff {diff.max()}, max rel diff {relative.max()}"
                        f" (atol={atol}, rtol={rtol})\n{a}\n{b}")
