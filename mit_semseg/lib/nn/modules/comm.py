"""Old path of :mod:`mit_semseg.lib.nn.comm` (re-exports)."""
from ..comm import FutureResult, SlavePipe, SyncMaster

__all__ = ["FutureResult", "SlavePipe", "SyncMaster"]
