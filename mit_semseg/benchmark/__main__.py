"""``python -m mit_semseg.benchmark``: the same as ``python -m mit_semseg benchmark``."""
from ..commands.benchmark import main
from ..runtime.process import exit_now

exit_now(main())
