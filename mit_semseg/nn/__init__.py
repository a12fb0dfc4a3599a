"""Live layers: synchronized BatchNorm (over DataParallel replicas and
torch.distributed ranks), the single-process multi-GPU wrappers and their
collate/copy helpers.

These are the modules a model is built from and trained with; the passes that
rewrite a model for speed live in :mod:`mit_semseg.accel`. The original's
module paths (``mit_semseg.lib.nn.*``) re-export these.
"""
from .batchnorm import (DEFAULT_MOMENTUM, SynchronizedBatchNorm1d, SynchronizedBatchNorm2d,
                        SynchronizedBatchNorm3d)
from .data_parallel import (DictGatherDataParallel, UserScatteredDataParallel, async_copy_to,
                            dict_gather, user_scattered_collate)
from .replicate import DataParallelWithCallback, patch_replication_callback

__all__ = ["DEFAULT_MOMENTUM", "SynchronizedBatchNorm1d", "SynchronizedBatchNorm2d",
           "SynchronizedBatchNorm3d", "DataParallelWithCallback", "patch_replication_callback",
           "UserScatteredDataParallel", "DictGatherDataParallel", "user_scattered_collate",
           "async_copy_to", "dict_gather"]
