"""Old path of the dataset classes: ``torch.utils.data``'s (re-exports)."""
from torch import randperm  # noqa: F401 (as the original)
from torch.utils.data import ConcatDataset, Dataset, Subset, TensorDataset, random_split

__all__ = ["Dataset", "TensorDataset", "ConcatDataset", "Subset", "random_split"]
