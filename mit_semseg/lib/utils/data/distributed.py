"""Old path of ``DistributedSampler``: ``torch.utils.data``'s (re-export)."""
from torch.distributed import get_rank, get_world_size  # noqa: F401 (as the original)
from torch.utils.data import DistributedSampler, Sampler  # noqa: F401

__all__ = ["DistributedSampler"]
