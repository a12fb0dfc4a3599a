"""The hash ledger: the ``SHA256SUMS`` file of a folder of weights.

A folder that holds downloaded or saved weights (``ckpt/<model>/``,
``pretrained/``, a model folder) lists the SHA-256 of its files in
``SHA256SUMS``, in ``sha256sum`` format (``<hex>  <name>``, one file a line,
sorted by name so that the same files always give the same bytes). Whoever
writes a listed file records its new hash here (:func:`record_sha256`) or drops
its line (:func:`forget_sha256`); every load checks against it
(:func:`verify_file`, :func:`verify_folder`). A file whose hash is wrong is
never loaded: it is renamed to ``<name>.corrupt`` and HashMismatchError says so.

This module only hashes, records, reads and checks; where files come from is
:mod:`.download`'s business.
"""
from __future__ import annotations

import hashlib
import os
import re
from typing import Mapping

from ._atomic import atomic_write_stream
from ._errors import HashMismatchError

__all__ = ["SUMS_NAME", "HashMismatchError", "sha256_file", "is_sha256", "parse_sums",
           "read_sums", "record_sha256", "forget_sha256", "verify_file", "verify_folder",
           "mismatch_error", "update_if_listed"]

SUMS_NAME = "SHA256SUMS"

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_SUMS_LINE = re.compile(r"^([0-9a-fA-F]{64}) [ *](.+)$")


def sha256_file(path: str) -> str:
    """Hex SHA-256 of the file at ``path``."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def is_sha256(text: str) -> bool:
    """True for 64 lowercase hex digits."""
    return bool(_HEX64.match(text))


def parse_sums(text: str) -> dict[str, str]:
    """``{filename: sha256}`` from ``sha256sum`` output: ``<hex>  <name>`` (or
    ``<hex> *<name>``); lines that are not are ignored, hashes come out lowercase."""
    sums: dict[str, str] = {}
    for line in text.splitlines():
        if m := _SUMS_LINE.match(line.strip()):
            sums[m.group(2)] = m.group(1).lower()
    return sums


def _read_text(folder: str) -> str | None:
    try:
        with open(os.path.join(folder, SUMS_NAME), encoding="utf-8") as fh:
            return fh.read()
    except FileNotFoundError:
        return None


def read_sums(folder: str) -> dict[str, str]:
    """``{filename: sha256}`` from ``folder/SHA256SUMS`` (empty when there is none);
    see :func:`parse_sums`."""
    text = _read_text(folder)
    return {} if text is None else parse_sums(text)


def _format_sums(sums: Mapping[str, str]) -> str:
    return "".join(f"{sums[name]}  {name}\n" for name in sorted(sums))


def _write_sums(folder: str, sums: Mapping[str, str], old_text: str | None) -> None:
    """Write the ledger in its one form (sorted by name), unless it is already so."""
    text = _format_sums(sums)
    if text != old_text:
        data = text.encode("utf-8")
        atomic_write_stream(os.path.join(folder, SUMS_NAME), lambda fh: fh.write(data))


def record_sha256(folder: str, filename: str, digest: str) -> None:
    """Set the entry of ``filename`` in ``folder/SHA256SUMS`` (created if needed)."""
    digest = digest.lower()
    if not is_sha256(digest):
        raise ValueError(f"not a SHA-256 hex digest: {digest!r}")
    old_text = _read_text(folder)
    sums = {} if old_text is None else parse_sums(old_text)
    sums[filename] = digest
    _write_sums(folder, sums, old_text)


def forget_sha256(folder: str, filename: str) -> None:
    """Drop the entry of ``filename`` from ``folder/SHA256SUMS``, if any.

    Whatever overwrites a listed file with other content must call this (or
    :func:`record_sha256`), or later checks will refuse the new file.
    """
    old_text = _read_text(folder)
    sums = {} if old_text is None else parse_sums(old_text)
    if sums.pop(filename, None) is not None:
        _write_sums(folder, sums, old_text)


def mismatch_error(path: str, expected: str, actual: str, fate: str) -> HashMismatchError:
    """The one-line HashMismatchError for ``path``; ``fate`` says what became of the file."""
    return HashMismatchError(
        f"SHA-256 mismatch for {path}: expected {expected}, got {actual}; {fate}",
        path, expected, actual)


def verify_file(path: str, expected_sha256: str | None = None) -> str | None:
    """Check ``path`` against ``expected_sha256`` or, when None, its entry in the
    ``SHA256SUMS`` of its folder; returns the hash checked, or None if none is known.

    On a mismatch the file is renamed to ``<path>.corrupt`` and HashMismatchError
    is raised. A missing file raises FileNotFoundError.
    """
    expected = expected_sha256 or read_sums(os.path.dirname(os.path.abspath(path))).get(
        os.path.basename(path))
    if expected is None:
        if not os.path.isfile(path):
            raise FileNotFoundError(path)
        return None
    expected = expected.lower()
    actual = sha256_file(path)
    if actual != expected:
        aside = path + ".corrupt"
        os.replace(path, aside)
        raise mismatch_error(path, expected, actual, f"the file was renamed to {aside}")
    return actual


def verify_folder(folder: str) -> dict[str, str]:
    """Check every file listed in ``folder/SHA256SUMS``; returns ``{filename: sha256}``
    of those checked. Listed files that are absent are skipped.

    The first wrong file is renamed to ``<name>.corrupt`` and HashMismatchError is raised.
    """
    checked = {}
    for name, expected in read_sums(folder).items():
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            verify_file(path, expected)
            checked[name] = expected
    return checked


def update_if_listed(path: str) -> None:
    """After ``path`` was rewritten: if its folder's ``SHA256SUMS`` lists it, record
    its new hash; should that fail (an OSError), drop its line instead, so that later
    checks never refuse the new file."""
    folder, name = os.path.split(os.path.abspath(path))
    if name in read_sums(folder):
        try:
            record_sha256(folder, name, sha256_file(path))
        except OSError:
            forget_sha256(folder, name)
