"""Old path of :mod:`mit_semseg.nn.batchnorm` (re-exports only)."""
from mit_semseg.nn.batchnorm import *  # noqa: F401,F403
from mit_semseg.nn.batchnorm import __all__  # noqa: F401
