"""Old path of :mod:`mit_semseg.nn` (re-exports only)."""
from mit_semseg.nn import *  # noqa: F401,F403
from mit_semseg.nn import __all__  # noqa: F401
