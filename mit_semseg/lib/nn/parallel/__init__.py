"""Single-process multi-GPU helpers (implementation in :mod:`.data_parallel`)."""
from .data_parallel import (DictGatherDataParallel, UserScatteredDataParallel, async_copy_to,
                            dict_gather, user_scattered_collate)

__all__ = ["UserScatteredDataParallel", "DictGatherDataParallel", "user_scattered_collate",
           "async_copy_to", "dict_gather"]
