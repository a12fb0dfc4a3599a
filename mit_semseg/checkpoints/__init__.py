"""Weights on disk and where they come from: crash-safe writing and safe
reading (``files``), and the models MIT released (``released``:
``python -m mit_semseg pretrained``)."""
from .files import CheckpointError, atomic_save, atomic_write_text, load_file
from .released import RELEASED_MODELS, DownloadError, fetch_model

__all__ = ["CheckpointError", "atomic_save", "atomic_write_text", "load_file",
           "RELEASED_MODELS", "DownloadError", "fetch_model"]
