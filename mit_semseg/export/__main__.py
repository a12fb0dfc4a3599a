"""``python -m mit_semseg.export``: the same as ``python -m mit_semseg export``."""
from ..commands.export import main
from ..runtime.process import exit_now

exit_now(main())
