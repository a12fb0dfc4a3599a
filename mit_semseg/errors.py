"""The one base class of the errors this package reports to its users.

Every error that means "the input, the configuration, a file or the machine is
not what the command needs" derives from :class:`MitSemsegError` (and from
the built-in class it used to be, such as ``ValueError`` or
``FileNotFoundError``, so existing ``except`` clauses keep working). The
command-line entry points print such an error as one line,
``error: <message>``, and exit with status 1 (see ``mit_semseg.cli``);
anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

__all__ = ["MitSemsegError", "InputNotFoundError"]


class MitSemsegError(Exception):
    """Base of the package's user-facing errors; the message is one line that names
    the file, line, key or device at fault and says what to do."""


class InputNotFoundError(MitSemsegError, FileNotFoundError):
    """A file or folder named on the command line or in a config does not exist."""
