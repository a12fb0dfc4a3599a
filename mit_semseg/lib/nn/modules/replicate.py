"""Old path of :mod:`mit_semseg.lib.nn.replicate` (re-exports)."""
from torch.nn.parallel.data_parallel import DataParallel  # noqa: F401 (as the original)

from ..replicate import (CallbackContext, DataParallelWithCallback, execute_replication_callbacks,
                         patch_replication_callback)

__all__ = ["CallbackContext", "execute_replication_callbacks", "DataParallelWithCallback",
           "patch_replication_callback"]
