"""The original's module path for synchronized BatchNorm; the code lives in :mod:`mit_semseg.lib.nn`."""
from ..batchnorm import SynchronizedBatchNorm1d, SynchronizedBatchNorm2d, SynchronizedBatchNorm3d
from ..replicate import DataParallelWithCallback, patch_replication_callback

__all__ = ["SynchronizedBatchNorm1d", "SynchronizedBatchNorm2d", "SynchronizedBatchNorm3d",
           "DataParallelWithCallback", "patch_replication_callback"]
