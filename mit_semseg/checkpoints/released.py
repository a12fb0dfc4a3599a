"""The models MIT released for ADE20K (the catalogue), their SHA-256 manifest
(``released_sha256.json``) and their download.

``python3 -m mit_semseg pretrained ade20k-resnet50dilated-ppm_deepsup`` puts
``encoder_epoch_20.pth`` and ``decoder_epoch_20.pth`` into
``ckpt/ade20k-resnet50dilated-ppm_deepsup/``, the folder (``DIR``) and
checkpoint name (``TEST.checkpoint``) its preset config expects. Each file is
fetched by :func:`mit_semseg.checkpoints.download.fetch_file`: from the MIT
host, then the mirrors (``--mirror``, ``MIT_SEMSEG_MIRRORS``, the config's
``MODEL.mirrors``: URLs, folders, archives), resuming a cut download, with a
progress bar; its SHA-256 is checked against the package manifest
(:func:`released_manifest`) or, at the first download, recorded in
``ckpt/<name>/SHA256SUMS`` and checked on every later load and copy. Files
that are already there (and right) are kept.

``--list`` shows the names. Without network access the error lists every
source tried and the destination, so the files can be fetched elsewhere and
copied there (or served from a mirror).
"""
from __future__ import annotations

import json
import os
from functools import lru_cache
from typing import Iterable, NamedTuple

from ..errors import MitSemsegError
from . import download as _download
from .download import MIT_HOST, DownloadError, fetch_file, resolve_sources
from .ledger import is_sha256

__all__ = ["ReleasedModel", "RELEASED_MODELS", "MODEL_URL", "DownloadError", "UnknownModelError",
           "download", "fetch_model", "canonical_name", "preset_config", "released_manifest",
           "released_sha256"]

MODEL_URL = MIT_HOST
_MANIFEST = os.path.join(os.path.dirname(os.path.abspath(__file__)), "released_sha256.json")


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


@lru_cache(maxsize=1)
def _package_manifest() -> dict[str, str]:
    with open(_MANIFEST, encoding="utf-8") as fh:
        data = json.load(fh)
    entries = data.get("sha256", {})
    bad = [k for k, v in entries.items() if not isinstance(v, str) or not is_sha256(v)]
    if bad:
        raise ValueError(f"{_MANIFEST}: entries that are not 64 lowercase hex digits: "
                         f"{', '.join(bad)}")
    return dict(entries)


def released_manifest() -> dict[str, str]:
    """``{"<model>/<file>": sha256}`` shipped with the package (``released_sha256.json``)."""
    return dict(_package_manifest())


def released_sha256(relpath: str) -> str | None:
    """The SHA-256 shipped in the package manifest for ``<model>/<file>``, or None."""
    return _package_manifest().get(relpath)


def download(url: str, dest: str, *, timeout: float = 60.0, quiet: bool = False) -> str:
    """Download ``url`` to ``dest`` (resuming, through ``dest.part``; see
    :func:`mit_semseg.checkpoints.download.download`); returns ``dest``.

    An existing ``dest`` is kept as it is. Raises DownloadError on failure.
    """
    if os.path.isfile(dest):
        return dest
    try:
        return _download.download(url, dest, timeout=timeout, progress=not quiet)
    except DownloadError as exc:
        raise DownloadError(f"could not download {exc}. If this machine is offline, download "
                            f"that URL elsewhere and copy the file to {dest}") from None


def canonical_name(name: str) -> str:
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in RELEASED_MODELS:
        raise UnknownModelError(f"unknown released model '{name}'; known: {', '.join(RELEASED_MODELS)}")
    return key


def preset_config(name: str) -> str:
    """The preset config file of released model ``name``: ``config/<preset>.yaml`` in
    the current folder, else in the repository this package belongs to."""
    relative = RELEASED_MODELS[canonical_name(name)].config
    if os.path.isfile(relative):
        return relative
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    beside = os.path.join(repo, relative)
    return beside if os.path.isfile(beside) else relative


def fetch_model(name: str, dest_root: str = "ckpt", *,
                mirrors: str | Iterable[str] | None = (),
                config_mirrors: str | Iterable[str] | None = (), timeout: float = 60.0,
                progress: bool = True, quiet: bool | None = None) -> tuple[str, str]:
    """Put the encoder and decoder of released model ``name`` into ``dest_root/<name>/``;
    returns their paths. Sources: :func:`~mit_semseg.checkpoints.download.resolve_sources`
    (the MIT host, ``mirrors``, ``MIT_SEMSEG_MIRRORS``, then ``config_mirrors``, the
    config's ``MODEL.mirrors``); hashes: the package manifest, else the folder's
    ``SHA256SUMS``. ``quiet``: the same as ``progress=False``."""
    if quiet is not None:
        progress = not quiet
    key = canonical_name(name)
    model = RELEASED_MODELS[key]
    sources = resolve_sources(mirrors, config=config_mirrors)
    manifest = _package_manifest()
    paths = []
    for part in ("encoder", "decoder"):
        filename = f"{part}_{model.checkpoint}"
        paths.append(fetch_file(f"{key}/{filename}", os.path.join(dest_root, key, filename),
                                sources, timeout=timeout, progress=progress, manifest=manifest))
    return paths[0], paths[1]
