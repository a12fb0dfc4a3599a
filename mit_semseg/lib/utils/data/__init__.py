"""The original vendored a 2018 copy of ``torch.utils.data`` here; today's is re-exported.

``DataLoader``, the datasets and the samplers are PyTorch's own classes, so
code importing them from this path gets current behaviour (worker processes,
pinning, ``persistent_workers``...) and current signatures.
"""
from torch.utils.data import DataLoader  # noqa: F401

from .dataset import ConcatDataset, Dataset, Subset, TensorDataset, random_split  # noqa: F401
from .distributed import DistributedSampler  # noqa: F401
from .sampler import (BatchSampler, RandomSampler, Sampler, SequentialSampler,  # noqa: F401
                      SubsetRandomSampler, WeightedRandomSampler)

__all__ = ["Dataset", "TensorDataset", "ConcatDataset", "DataLoader"]
