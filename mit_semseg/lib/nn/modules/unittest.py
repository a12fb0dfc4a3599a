"""The original's module path of ``TorchTestCase``; the code lives in
:mod:`mit_semseg.nn.testing` (re-exports only)."""
from torch.autograd import Variable  # noqa: F401 (as the original)

from mit_semseg.nn.testing import TorchTestCase, as_numpy  # noqa: F401

__all__ = ["TorchTestCase", "as_numpy"]
