"""Neural-network building blocks shared by all models.

Synchronized BatchNorm (over DataParallel replicas and torch.distributed
ranks) and the single-process multi-GPU helpers of the original toolkit.
The original's module paths (``lib.nn.modules.*``,
``lib.nn.parallel.data_parallel``) re-export these.
"""
from .batchnorm import (DEFAULT_MOMENTUM, SynchronizedBatchNorm1d, SynchronizedBatchNorm2d,
                        SynchronizedBatchNorm3d)
from .parallel import UserScatteredDataParallel, async_copy_to, user_scattered_collate
from .replicate import DataParallelWithCallback, patch_replication_callback

__all__ = ["DEFAULT_MOMENTUM", "SynchronizedBatchNorm1d", "SynchronizedBatchNorm2d",
           "SynchronizedBatchNorm3d", "DataParallelWithCallback", "patch_replication_callback",
           "UserScatteredDataParallel", "user_scattered_collate", "async_copy_to"]
