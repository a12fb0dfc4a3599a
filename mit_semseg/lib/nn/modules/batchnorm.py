"""Old path of :mod:`mit_semseg.lib.nn.batchnorm` (re-exports)."""
from torch.nn.parallel._functions import Broadcast, ReduceAddCoalesced  # noqa: F401 (as the original)

from ..batchnorm import SynchronizedBatchNorm1d, SynchronizedBatchNorm2d, SynchronizedBatchNorm3d
from ..comm import SyncMaster  # noqa: F401

__all__ = ["SynchronizedBatchNorm1d", "SynchronizedBatchNorm2d", "SynchronizedBatchNorm3d"]
