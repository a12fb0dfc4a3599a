"""Old path of :mod:`mit_semseg.nn.replicate` (re-exports only)."""
from mit_semseg.nn.replicate import *  # noqa: F401,F403
from mit_semseg.nn.replicate import __all__  # noqa: F401
