"""Old path of ``load_url`` (implemented in :mod:`mit_semseg.models.weights`)."""
from .weights import load_url

__all__ = ["load_url"]
