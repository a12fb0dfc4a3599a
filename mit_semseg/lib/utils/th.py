"""The original's module path of the tensor helpers; the code lives in
:mod:`mit_semseg.nn.tensors` (re-exports only)."""
from torch.autograd import Variable  # noqa: F401 (as the original)

from mit_semseg.nn.tensors import as_numpy, as_variable, mark_volatile  # noqa: F401

__all__ = ["as_variable", "as_numpy", "mark_volatile"]
