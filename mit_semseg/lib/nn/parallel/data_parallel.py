"""The original's module path of the multi-GPU helpers; the code lives in
:mod:`mit_semseg.nn.data_parallel` (re-exports only)."""
from mit_semseg.nn.data_parallel import *  # noqa: F401,F403
from mit_semseg.nn.data_parallel import Gather, __all__  # noqa: F401
