"""``python -m mit_semseg.web``: the same as ``python -m mit_semseg web``."""
from ..commands.web import main
from ..runtime.process import exit_now

exit_now(main())
