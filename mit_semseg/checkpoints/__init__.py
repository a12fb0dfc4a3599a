"""Weights on disk and where they come from: crash-safe writing and safe
reading (``files``), ``.pth`` and ``.safetensors`` (``formats``), the hash
ledger of a folder (``ledger``: ``SHA256SUMS``), downloads that resume, fall
back to mirrors and check SHA-256 (``download``), the catalogue of models MIT
released (``released``: ``python -m mit_semseg pretrained``) and model folders
on the Hugging Face Hub (``hub``). Writing and reading files uses the ledger,
never the downloads."""
from .download import DownloadError
from .files import CheckpointError, atomic_save, atomic_write_text, load_file
from .formats import FormatError, convert, read_weights, write_weights
from .ledger import HashMismatchError, verify_file, verify_folder
from .released import RELEASED_MODELS, fetch_model

__all__ = ["CheckpointError", "atomic_save", "atomic_write_text", "load_file",
           "RELEASED_MODELS", "DownloadError", "HashMismatchError", "fetch_model",
           "verify_file", "verify_folder", "FormatError", "convert", "read_weights",
           "write_weights"]
