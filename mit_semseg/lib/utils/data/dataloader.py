"""Old path of the DataLoader and its helpers, mapped onto today's ``torch.utils.data``.

``DataLoaderIter`` is the base class of torch's loader iterators,
``pin_memory_batch`` pins every tensor of a (nested) batch, and
``numpy_type_map`` maps numpy dtype names to torch's legacy tensor types.
"""
import torch
from torch._utils import ExceptionWrapper  # noqa: F401
from torch.utils.data import (BatchSampler, DataLoader, RandomSampler,  # noqa: F401
                              SequentialSampler, default_collate)
from torch.utils.data._utils.pin_memory import pin_memory as pin_memory_batch  # noqa: F401
from torch.utils.data.dataloader import _BaseDataLoaderIter as DataLoaderIter  # noqa: F401

string_classes = (str, bytes)
int_classes = int

numpy_type_map = {
    "float64": torch.DoubleTensor, "float32": torch.FloatTensor, "float16": torch.HalfTensor,
    "int64": torch.LongTensor, "int32": torch.IntTensor, "int16": torch.ShortTensor,
    "int8": torch.CharTensor, "uint8": torch.ByteTensor,
}

__all__ = ["DataLoader", "DataLoaderIter", "ExceptionWrapper", "default_collate",
           "pin_memory_batch", "numpy_type_map"]
