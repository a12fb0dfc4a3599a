"""``python -m mit_semseg COMMAND [ARGS]``: see :mod:`mit_semseg.commands`."""
from .commands import main
from .runtime.process import exit_now

exit_now(main())
