"""The models MIT released for ADE20K, and a downloader for them.

``python3 -m mit_semseg pretrained ade20k-resnet50dilated-ppm_deepsup`` puts
``encoder_epoch_20.pth`` and ``decoder_epoch_20.pth`` into
``ckpt/ade20k-resnet50dilated-ppm_deepsup/``, the folder (``DIR``) and
checkpoint name (``TEST.checkpoint``) its preset config expects. Files that
are already there are kept. Downloads go to a temporary file in the same
folder and are renamed when complete, so an interrupted download never
leaves a truncated checkpoint behind.

``--list`` shows the names. Without network access the error names the URL
and the destination, so the files can be fetched elsewhere and copied there.
"""
from __future__ import annotations

import os
import sys
import tempfile
import urllib.error
import urllib.request
from typing import NamedTuple, Sequence

from ..errors import MitSemsegError

__all__ = ["ReleasedModel", "RELEASED_MODELS", "MODEL_URL", "DownloadError", "UnknownModelError", "download",
           "fetch_model", "canonical_name"]

MODEL_URL = "http://sceneparsing.csail.mit.edu/model/pytorch"


class ReleasedModel(NamedTuple):
    """A released checkpoint: its preset config and training epoch."""
    config: str
    epoch: int

    @property
    def checkpoint(self) -> str:
        """The checkpoint suffix (``VAL.checkpoint`` / ``TEST.checkpoint``)."""
        return f"epoch_{self.epoch}.pth"


# Folder names on the model server (= DIR basenames of the presets).
RELEASED_MODELS: dict[str, ReleasedModel] = {
    name: ReleasedModel(f"config/{config}.yaml", epoch) for name, config, epoch in (
        ("ade20k-mobilenetv2dilated-c1_deepsup", "ade20k-mobilenetv2dilated-c1_deepsup", 20),
        ("ade20k-resnet18dilated-ppm_deepsup", "ade20k-resnet18dilated-ppm_deepsup", 20),
        ("ade20k-resnet50dilated-ppm_deepsup", "ade20k-resnet50dilated-ppm_deepsup", 20),
        ("ade20k-resnet101dilated-ppm_deepsup", "ade20k-resnet101dilated-ppm_deepsup", 25),
        ("ade20k-resnet50-upernet", "ade20k-resnet50-upernet", 30),
        ("ade20k-resnet101-upernet", "ade20k-resnet101-upernet", 50),
        ("ade20k-hrnetv2-c1", "ade20k-hrnetv2", 30),
    )
}
# Accepted spellings: the preset file names where they differ from the folder.
_ALIASES = {"ade20k-hrnetv2": "ade20k-hrnetv2-c1"}


class UnknownModelError(MitSemsegError, KeyError):
    """A name that is not one of RELEASED_MODELS (the message lists them)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class DownloadError(MitSemsegError, OSError):
    """A download failed; the message names the URL and the destination path."""


def download(url: str, dest: str, *, timeout: float = 60.0, quiet: bool = False) -> str:
    """Download ``url`` to ``dest`` atomically (temporary file + rename); returns ``dest``.

    An existing ``dest`` is kept as it is. Raises DownloadError on failure.
    """
    if os.path.isfile(dest):
        return dest
    folder = os.path.dirname(os.path.abspath(dest))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(dest) + ".", suffix=".part", dir=folder)
    try:
        with os.fdopen(fd, "wb") as out:
            _copy_url(url, out, timeout, quiet)
        os.replace(tmp, dest)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise DownloadError(
            f"could not download {url} to {dest}: {reason}. If this machine is offline, "
            f"download that URL elsewhere and copy the file to {dest}") from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return dest


def _copy_url(url: str, out, timeout: float, quiet: bool) -> None:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        total = int(response.headers.get("Content-Length") or 0)
        if not quiet:
            size = f" ({total / 2**20:.1f} MiB)" if total else ""
            print(f"Downloading {url}{size}", file=sys.stderr)
        copied = 0
        while True:
            chunk = response.read(1 << 20)
            if not chunk:
                break
            out.write(chunk)
            copied += len(chunk)
        if total and copied != total:
            raise OSError(f"connection closed after {copied} of {total} bytes")


def canonical_name(name: str) -> str:
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in RELEASED_MODELS:
        raise UnknownModelError(f"unknown released model '{name}'; known: {', '.join(RELEASED_MODELS)}")
    return key


def fetch_model(name: str, dest_root: str = "ckpt", *, timeout: float = 60.0,
                quiet: bool = False) -> tuple[str, str]:
    """Download the encoder and decoder of released model ``name`` into
    ``dest_root/<name>/``; returns their paths."""
    key = canonical_name(name)
    model = RELEASED_MODELS[key]
    paths = []
    for part in ("encoder", "decoder"):
        filename = f"{part}_{model.checkpoint}"
        paths.append(download(f"{MODEL_URL}/{key}/{filename}", os.path.join(dest_root, key, filename),
                              timeout=timeout, quiet=quiet))
    return paths[0], paths[1]
