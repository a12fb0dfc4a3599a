"""Weights on disk and where they come from: crash-safe writing and safe
reading (``files``), ``.pth`` and ``.safetensors`` (``formats``), downloads
that resume, fall back to mirrors and check SHA-256 (``download``), the models
MIT released (``released``: ``python -m mit_semseg pretrained``) and model
folders on the Hugging Face Hub (``hub``)."""
from .download import DownloadError, HashMismatchError, verify_file, verify_folder
from .files import CheckpointError, atomic_save, atomic_write_text, load_file
from .formats import FormatError, convert, read_weights, write_weights
from .released import RELEASED_MODELS, fetch_model

__all__ = ["CheckpointError", "atomic_save", "atomic_write_text", "load_file",
           "RELEASED_MODELS", "DownloadError", "HashMismatchError", "fetch_model",
           "verify_file", "verify_folder", "FormatError", "convert", "read_weights",
           "write_weights"]
