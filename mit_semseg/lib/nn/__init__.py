"""Neural-network building blocks shared by all models."""
from .batchnorm import (DEFAULT_MOMENTUM, SynchronizedBatchNorm1d, SynchronizedBatchNorm2d,
                        SynchronizedBatchNorm3d)

__all__ = ["DEFAULT_MOMENTUM", "SynchronizedBatchNorm1d", "SynchronizedBatchNorm2d",
           "SynchronizedBatchNorm3d"]
