"""Old path of the tensor helpers (:mod:`.th`) and of a DataLoader (:mod:`.data`)."""
from torch.autograd import Variable  # noqa: F401 (as the original)

from .th import as_numpy, as_variable, mark_volatile

__all__ = ["as_variable", "as_numpy", "mark_volatile"]
