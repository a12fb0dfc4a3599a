"""Checkpoint downloads that survive cut connections, dead hosts and bad bytes.

Resuming: :func:`download` writes to ``<dest>.part`` and renames it to
``dest`` only when it is complete and its SHA-256 is right. A ``.part`` left
by a cut connection (or a killed process) is continued with an HTTP
``Range: bytes=N-`` request; a server that ignores ranges (answers ``200``
instead of ``206``) is downloaded again from byte 0.

Sources: a released file is named by its path ``<model>/<file>`` (as on the
MIT server) and fetched by :func:`fetch_file` from the first of a list of
sources that has it. A source is

* a URL prefix (``http://``, ``https://``, ``file://``): ``<prefix>/<model>/<file>``;
* a local folder holding ``<model>/<file>``;
* a local archive (``.zip``, ``.tar``, ``.tar.gz``, ``.tgz``, ``.tar.bz2``,
  ``.tar.xz``) holding ``<model>/<file>``, at its top or under one folder.

:func:`resolve_sources` lists them in the order tried: the MIT host, the
mirrors given as arguments (a command's ``--mirror``), the
``MIT_SEMSEG_MIRRORS`` environment variable (read at each call), then the
config's mirrors (``MODEL.mirrors``). Every function here that downloads takes
its mirrors as arguments (``mirrors``, ``config_mirrors``); nothing is kept
between calls. ``MIT_SEMSEG_MIRRORS`` holds one or more sources
separated by ``os.pathsep`` (``:`` on Linux and macOS, ``;`` on Windows) or by
commas. URLs are kept whole (``http://host:8080/models`` is one source); after
a URL, a ``:`` starts a new source only before ``/``, ``~``, ``.`` or another
URL, so write a relative folder there as ``./folder`` or use a comma::

    export MIT_SEMSEG_MIRRORS=https://mirror.example.org/semseg,/mnt/share/semseg-models.zip

Hashes: the SHA-256 a file must have comes from the caller, else from a
manifest the caller passes (the released models' one:
:func:`mit_semseg.checkpoints.released.released_manifest`), else from the
``SHA256SUMS`` ledger of the destination folder (:mod:`.ledger`). Every
fetched file has its hash recorded there (for a file without a known hash: the
hash of its first download), and :func:`~.ledger.verify_folder` /
:func:`~.ledger.verify_file` check against it later. A file
whose hash is wrong is never returned: a download is deleted, a file already
in a folder is renamed to ``<name>.corrupt``; the error says which.
"""
from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import re
import socket
import sys
import tarfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from typing import IO, Callable, Iterable, Mapping, Sequence

from tqdm import tqdm

from ._atomic import fsync_dir
from ._errors import DownloadError, HashMismatchError
from .ledger import SUMS_NAME, mismatch_error, parse_sums, read_sums, record_sha256, sha256_file, \
    verify_file

__all__ = ["MIT_HOST", "MIRRORS_ENV", "DownloadError", "HashMismatchError", "download",
           "resolve_sources", "fetch_file", "fetch_url"]

MIT_HOST = "http://sceneparsing.csail.mit.edu/model/pytorch"
MIRRORS_ENV = "MIT_SEMSEG_MIRRORS"

_CHUNK = 1 << 18
_ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
_USER_AGENT = "mit_semseg-downloader"


class _Cut(Exception):
    """The body ended early; what arrived is kept in the ``.part`` file."""


# ----------------------------------------------------------------------------- one URL

def download(url: str, dest: str, *, expected_sha256: str | None = None, timeout: float = 60.0,
             progress: bool = True, resume: bool = True, attempts: int = 3) -> str:
    """Download ``url`` to ``dest`` (replacing it) through ``dest + ".part"``; returns ``dest``.

    With ``resume`` an existing ``.part`` is continued (``Range`` request); a server
    that ignores the range sends the whole file again and the ``.part`` is restarted
    from zero. A connection cut mid-way is resumed, up to ``attempts`` tries in all;
    after that DownloadError is raised and the ``.part`` is kept for the next call.
    With ``expected_sha256`` the result is checked: a file resumed from an older
    ``.part`` gets one clean retry, then HashMismatchError (the download is deleted).
    ``dest`` is only ever replaced by a complete, checked file (atomic rename).
    """
    part = dest + ".part"
    os.makedirs(os.path.dirname(os.path.abspath(dest)), exist_ok=True)
    if not resume:
        _remove(part)
    expected = expected_sha256.lower() if expected_sha256 else None
    tries = 0
    clean_retry_left = True
    resumed = False
    while True:
        tries += 1
        try:
            resumed |= _fetch_into(url, part, timeout, progress, os.path.basename(dest))
        except _Cut as exc:
            if tries < attempts:
                continue
            raise DownloadError(f"{url}: {exc}; {_size(part)} bytes kept in {part}, "
                                f"the next download resumes from there") from None
        except urllib.error.HTTPError as exc:
            raise DownloadError(f"{url}: HTTP {exc.code} {exc.reason}") from None
        except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as exc:
            error = DownloadError(f"{url}: {_reason(exc)}")
            cause = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            error.unreachable = isinstance(cause, (ConnectionError, socket.gaierror, TimeoutError,
                                                  socket.timeout))  # distinct before 3.10
            raise error from None
        if expected is not None:
            actual = sha256_file(part)
            if actual != expected:
                _remove(part)
                if resumed and clean_retry_left:  # the old .part may hold another file's bytes
                    clean_retry_left = resumed = False
                    tries = 0
                    continue
                raise mismatch_error(url, expected, actual, f"the download ({part}) was deleted")
        _finish(part, dest)
        return dest


def _fetch_into(url: str, part: str, timeout: float, progress: bool, label: str) -> bool:
    """One request appending to (or restarting) ``part``; True if it resumed.

    Raises _Cut when the body ends early (``part`` keeps what arrived).
    """
    offset = _size(part)
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code != 416 or not offset:
            raise
        # Range not satisfiable: the .part is complete if the server says so, else start over.
        total = _content_range_total(exc.headers.get("Content-Range", ""))
        exc.close()
        if total == offset:
            return True
        _remove(part)
        raise _Cut(f"server refused to resume at byte {offset} (HTTP 416); restarting") from None
    with response:
        status = getattr(response, "status", None)  # None for file:// URLs
        length = response.headers.get("Content-Length")
        length = int(length) if length and length.isdigit() else None
        if offset and status == 206:
            start = _content_range_start(response.headers.get("Content-Range", ""))
            if start != offset:
                _remove(part)
                raise _Cut(f"server sent bytes from {start} when asked for {offset}; restarting")
            mode, resumed = "ab", True
        else:
            offset, mode, resumed = 0, "wb", False
        total = offset + length if length is not None else None
        received = 0
        with open(part, mode) as out, tqdm(total=total, initial=offset, unit="B", unit_scale=True,
                                           unit_divisor=1024, desc=label, disable=not progress,
                                           file=sys.stderr, leave=False) as bar:
            try:
                while chunk := response.read(_CHUNK):
                    out.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
            except (http.client.IncompleteRead, ConnectionError, socket.timeout) as exc:
                raise _Cut(f"connection lost after {offset + received} bytes "
                           f"({_reason(exc)})") from None
            finally:
                out.flush()
                os.fsync(out.fileno())
        if length is not None and received < length:
            raise _Cut(f"connection closed after {offset + received} of {total} bytes")
    return resumed


def _content_range_start(header: str) -> int | None:
    m = re.match(r"^\s*bytes\s+(\d+)-", header)
    return int(m.group(1)) if m else None


def _content_range_total(header: str) -> int | None:
    m = re.match(r"^\s*bytes\s+[^/]*/(\d+)\s*$", header)
    return int(m.group(1)) if m else None


# ----------------------------------------------------------------------------- sources

def _split_sources(text: str) -> list[str]:
    """Split a list of sources on commas and os.pathsep. Where os.pathsep is ``:``
    URLs are kept whole: after a URL, a ``:`` starts a new source only before
    ``/``, ``~``, ``.`` or another ``scheme://`` (a comma always does)."""
    found: list[str] = []
    for piece in text.split(","):
        if os.pathsep != ":":
            found.extend(piece.split(os.pathsep))
            continue
        tokens = piece.split(":")
        merged: list[str] = []
        i = 0
        while i < len(tokens):
            token = tokens[i]
            if (re.fullmatch(r"\s*[A-Za-z][A-Za-z0-9+.-]*", token) and i + 1 < len(tokens)
                    and tokens[i + 1].startswith("//")):
                merged.append(f"{token}:{tokens[i + 1]}")
                i += 2
                continue
            if merged and "://" in merged[-1] and not token.lstrip().startswith(("/", "~", ".")):
                merged[-1] += ":" + token  # a port, an IPv6 address, a colon in the path
            else:
                merged.append(token)
            i += 1
        found.extend(merged)
    return [source.strip() for source in found if source.strip()]


def _as_list(value: str | Iterable[str] | None) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return _split_sources(value)
    return [v.strip() for v in value if v and v.strip()]


def resolve_sources(mirrors: str | Iterable[str] | None = None,
                    env: Mapping[str, str] | None = None,
                    config: str | Iterable[str] | None = None, *,
                    primary: str | None = None) -> list[str]:
    """The sources to try, in order: ``primary`` (default: the MIT host), ``mirrors``
    (a command's ``--mirror``), ``env[MIT_SEMSEG_MIRRORS]`` (``env`` defaults to
    ``os.environ``, read now), then ``config`` (the config's ``MODEL.mirrors``). Strings
    are split on commas and os.pathsep; duplicates are dropped (first kept)."""
    env = os.environ if env is None else env
    ordered = [primary or MIT_HOST, *_as_list(mirrors), *_as_list(env.get(MIRRORS_ENV)),
               *_as_list(config)]
    seen: set[str] = set()
    result = []
    for source in ordered:
        key = source.rstrip("/") if "://" in source else os.path.abspath(os.path.expanduser(source))
        if key not in seen:
            seen.add(key)
            result.append(source)
    return result


def fetch_file(relpath: str, dest: str, sources: Sequence[str],
               expected_sha256: str | None = None, *, timeout: float = 60.0,
               progress: bool = True, manifest: Mapping[str, str] | None = None) -> str:
    """Put the released file ``relpath`` (``<model>/<file>``) at ``dest``; returns ``dest``.

    The expected hash is ``expected_sha256``, else ``manifest[relpath]`` (``{relpath:
    sha256}``, e.g. the released models' manifest; default none), else the entry in
    ``dest``'s folder ``SHA256SUMS``. An
    existing ``dest`` is checked against it and kept when right (or when no hash is
    known); a wrong one is renamed aside and fetched again. Sources are tried in
    order, each failure (unreachable, missing, cut, wrong hash) moving on to the next;
    when all fail, one DownloadError lists every source and why it failed. A file
    fetched without a known hash gets its hash recorded in ``SHA256SUMS``.
    """
    relpath = relpath.strip("/")
    folder = os.path.dirname(os.path.abspath(dest))
    filename = os.path.basename(dest)
    manifest = {} if manifest is None else manifest
    recorded = read_sums(folder).get(filename)
    expected = expected_sha256 or manifest.get(relpath) or recorded
    expected = expected.lower() if expected else None
    from_sums = expected is not None and not expected_sha256 and not manifest.get(relpath)
    if os.path.isfile(dest):
        try:
            verify_file(dest, expected)
            return dest
        except HashMismatchError as exc:
            _note(progress, f"{exc}; fetching it again")
    if not sources:
        raise DownloadError(f"could not fetch {relpath} to {dest}: no sources given. "
                            + _hint(relpath, dest))
    failures: list[tuple[str, BaseException]] = []
    for source in sources:
        try:
            _fetch_from(source, relpath, dest, expected, timeout, progress)
        except (DownloadError, OSError, ValueError, tarfile.TarError, zipfile.BadZipFile) as exc:
            failures.append((source, exc))
            _note(progress, f"{source}: {_reason(exc)}")
            continue
        # Recorded even when the hash was known, so that later loads can check it.
        record_sha256(folder, filename, expected or sha256_file(dest))
        return dest
    raise _all_failed(relpath, dest, failures, from_sums)


def fetch_url(url: str, dest: str, *, mirrors: str | Iterable[str] | None = (),
              config_mirrors: str | Iterable[str] | None = (),
              expected_sha256: str | None = None, timeout: float = 60.0,
              progress: bool = True) -> str:
    """Put the file at ``url`` at ``dest`` through :func:`fetch_file`; returns ``dest``.

    The file's name on a mirror is the last two parts of the URL's path (for
    ``http://host/model/pretrained_resnet/resnet50-imagenet.pth``:
    ``pretrained_resnet/resnet50-imagenet.pth``); the sources are the URL's own
    prefix, then ``mirrors``, ``MIT_SEMSEG_MIRRORS`` and ``config_mirrors`` (the
    config's ``MODEL.mirrors``) as in :func:`resolve_sources`.
    """
    prefix, _, name = url.rstrip("/").rpartition("/")
    prefix, _, folder = prefix.rpartition("/")
    if "://" not in prefix or not name:  # too short a path: the file alone is the name
        prefix, folder = url.rstrip("/").rpartition("/")[0], ""
    relpath = f"{urllib.parse.unquote(folder)}/{urllib.parse.unquote(name)}".lstrip("/")
    sources = resolve_sources(mirrors, config=config_mirrors, primary=prefix)
    return fetch_file(relpath, dest, sources, expected_sha256, timeout=timeout,
                      progress=progress)


def _fetch_from(source: str, relpath: str, dest: str, expected: str | None, timeout: float,
                progress: bool) -> None:
    if "://" in source:
        url = source.rstrip("/") + "/" + urllib.parse.quote(relpath)
        download(url, dest, expected_sha256=expected, timeout=timeout, progress=progress)
        return
    local = os.path.abspath(os.path.expanduser(source))
    if local.lower().endswith(_ARCHIVE_SUFFIXES) and not os.path.isdir(local):
        if not os.path.isfile(local):
            raise DownloadError(f"archive not found: {local}")
        _copy_from_archive(local, relpath, dest, expected, progress)
        return
    if not os.path.isdir(local):
        raise DownloadError(f"folder not found: {local}")
    path = os.path.join(local, *relpath.split("/"))
    if not os.path.isfile(path):
        raise DownloadError(f"{path} not found")
    # A SHA256SUMS beside the source file is honoured too.
    beside = read_sums(os.path.dirname(path)).get(os.path.basename(path))
    with open(path, "rb") as src:
        _copy_checked(src, os.path.getsize(path), path, dest, expected, beside, progress)


def _copy_from_archive(archive: str, relpath: str, dest: str, expected: str | None,
                       progress: bool) -> None:
    if archive.lower().endswith(".zip"):
        with zipfile.ZipFile(archive) as zf:
            names = [i.filename for i in zf.infolist() if not i.is_dir()]
            member = _member(names, relpath, archive)
            beside = _sums_in(names, member, zf.read)
            with zf.open(member) as src:
                _copy_checked(src, zf.getinfo(member).file_size, f"{archive}:{member}", dest,
                              expected, beside, progress)
        return
    with tarfile.open(archive, "r:*") as tf:
        members = {m.name: m for m in tf.getmembers() if m.isfile()}
        member = _member(list(members), relpath, archive)

        def read(name: str) -> bytes:
            fh = tf.extractfile(members[name])
            return fh.read() if fh else b""

        beside = _sums_in(list(members), member, read)
        src = tf.extractfile(members[member])
        assert src is not None  # regular files always have data
        with src:
            _copy_checked(src, members[member].size, f"{archive}:{member}", dest, expected,
                          beside, progress)


def _member(names: Sequence[str], relpath: str, archive: str) -> str:
    """The member that is ``relpath`` at the top of the archive or under one folder."""
    for name in names:
        clean = name[2:] if name.startswith("./") else name
        if clean == relpath or (clean.endswith("/" + relpath)
                                and clean[:-len(relpath) - 1].count("/") == 0):
            return name
    raise DownloadError(f"{relpath} not in {archive}")


def _sums_in(names: Sequence[str], member: str, read: Callable[[str], bytes]) -> str | None:
    """The hash of ``member`` in a SHA256SUMS beside it in the archive, if any."""
    sums_name = member[:len(member) - len(os.path.basename(member))] + SUMS_NAME
    if sums_name not in names:
        return None
    return parse_sums(read(sums_name).decode("utf-8", "replace")).get(os.path.basename(member))


def _copy_checked(src: IO[bytes], size: int, label: str, dest: str, expected: str | None,
                  beside: str | None, progress: bool) -> None:
    """Copy a local stream to ``dest`` through ``dest.part``, checking both known hashes."""
    part = dest + ".part"
    os.makedirs(os.path.dirname(os.path.abspath(dest)), exist_ok=True)
    digest = hashlib.sha256()
    with open(part, "wb") as out, tqdm(total=size, unit="B", unit_scale=True, unit_divisor=1024,
                                       desc=os.path.basename(dest), disable=not progress,
                                       file=sys.stderr, leave=False) as bar:
        while chunk := src.read(_CHUNK):
            out.write(chunk)
            digest.update(chunk)
            bar.update(len(chunk))
        out.flush()
        os.fsync(out.fileno())
    actual = digest.hexdigest()
    for want in (expected, beside):
        if want is not None and actual != want:
            _remove(part)
            raise mismatch_error(label, want, actual, f"the copy ({part}) was deleted")
    _finish(part, dest)


def _all_failed(relpath: str, dest: str, failures: list[tuple[str, BaseException]],
                from_sums: bool) -> DownloadError:
    # Built here, not in the raising frame: a local holding the error would tie the
    # traceback into a cycle that keeps the callers' frames alive.
    error = DownloadError(_all_failed_message(relpath, dest, failures, from_sums))
    error.failures = failures
    return error


def _all_failed_message(relpath: str, dest: str, failures: list[tuple[str, BaseException]],
                        from_sums: bool) -> str:
    lines = [f"could not fetch {relpath} to {dest}; tried {len(failures)} source(s):"]
    lines += [f"  {i}. {source}: {_reason(exc)}" for i, (source, exc) in enumerate(failures, 1)]
    remote = [exc for source, exc in failures if "://" in source and not source.startswith("file:")]
    if remote and all(getattr(exc, "unreachable", False) for exc in remote):
        lines.append("No server could be reached: this machine seems to be offline.")
    if from_sums and any(isinstance(exc, HashMismatchError) for _, exc in failures):
        lines.append(f"The expected hash is the one recorded in "
                     f"{os.path.join(os.path.dirname(os.path.abspath(dest)), SUMS_NAME)} at the "
                     f"first download; remove its line if the file was replaced on purpose.")
    lines.append(_hint(relpath, dest))
    return "\n".join(lines)


def _hint(relpath: str, dest: str) -> str:
    return (f"Point {MIRRORS_ENV} at a mirror URL, a folder or a .zip/.tar archive holding "
            f"{relpath} (several separated by '{os.pathsep}' or ','), or copy the file to {dest}.")


def _reason(exc: BaseException) -> str:
    if isinstance(exc, DownloadError):
        return str(exc)
    reason = getattr(exc, "reason", None)
    if isinstance(reason, BaseException):
        return _reason(reason)
    return str(reason if reason is not None else exc) or type(exc).__name__


def _note(progress: bool, message: str) -> None:
    if progress:
        print(f"[mit_semseg] {message}", file=sys.stderr)


# ----------------------------------------------------------------------------- files

def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def _remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)


def _finish(part: str, dest: str) -> None:
    os.replace(part, dest)
    fsync_dir(os.path.dirname(os.path.abspath(dest)))
