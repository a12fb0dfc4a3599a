"""The original's module path ``mit_semseg.dataset`` (re-exports only): the
datasets live in :mod:`mit_semseg.data.datasets`, the preprocessing rule in
:mod:`mit_semseg.data.transforms`."""
from PIL import Image  # noqa: F401 (the original's module attribute)

from .data.datasets import (BaseDataset, DatasetError, TestDataset, TrainDataset,  # noqa: F401
                            ValDataset, imresize, worker_init_fn)

__all__ = ["BaseDataset", "TrainDataset", "ValDataset", "TestDataset", "imresize",
           "DatasetError", "worker_init_fn"]
