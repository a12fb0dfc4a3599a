"""Old path of :mod:`mit_semseg.nn.comm` (re-exports only)."""
from mit_semseg.nn.comm import *  # noqa: F401,F403
from mit_semseg.nn.comm import __all__  # noqa: F401
