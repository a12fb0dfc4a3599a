"""The errors of getting and checking weight files, shared by the ledger (hashes)
and the downloads so that a wrong hash stays a kind of DownloadError whichever
of them finds it. Public homes: :mod:`.download` and :mod:`.ledger`."""
from __future__ import annotations

from typing import Sequence

from ..errors import MitSemsegError

__all__ = ["DownloadError", "HashMismatchError"]


class DownloadError(MitSemsegError, OSError):
    """A file could not be obtained; the message says from where and why.

    ``unreachable``: the host could not be reached at all (refused, unknown name,
    timed out). ``failures``: from :func:`~.download.fetch_file`, ``(source, error)``
    per source tried.
    """
    unreachable: bool = False
    failures: Sequence[tuple[str, BaseException]] = ()


class HashMismatchError(DownloadError):
    """A file's SHA-256 is not the expected one. The message (one line) names the
    file, both hashes and what became of the file (deleted or renamed aside)."""

    def __init__(self, message: str, path: str, expected: str, actual: str):
        super().__init__(message)
        self.path, self.expected, self.actual = path, expected, actual
