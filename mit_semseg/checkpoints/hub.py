"""Model folders on the Hugging Face Hub (the optional ``[hub]`` extra).

:func:`resolve_model` turns what a user names into a local model folder: a
folder as it is, or a Hub repo id (``owner/name``) downloaded into the Hub
cache with ``huggingface_hub.snapshot_download`` (``HF_HUB_OFFLINE=1``, or
``local_files_only=True``, uses the cache only). :func:`push_to_hub` uploads a
folder. Without huggingface_hub folders work the same and a repo id is a
one-line error saying what to install. What a model folder holds is
:mod:`mit_semseg.models.folder`'s business.
"""
from __future__ import annotations

import os
import re
from types import ModuleType

from ..errors import InputNotFoundError, MitSemsegError
from .files import MODEL_CONFIG, MODEL_WEIGHTS, is_model_folder
from .ledger import verify_folder

__all__ = ["HubError", "HUB_INSTALL", "looks_like_repo_id", "resolve_model", "push_to_hub",
           "check_model_folder"]

HUB_INSTALL = 'pip install -e ".[hub]"'
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
_TRUE = {"1", "true", "yes", "on"}


class HubError(MitSemsegError, RuntimeError):
    """A repo id could not be resolved or uploaded (no huggingface_hub, offline,
    unknown repo, no access); the message names the repo and what to do."""


def looks_like_repo_id(name: str) -> bool:
    """``owner/name`` without path markers (``./``, ``/``, ``~``, ``\\``)."""
    return bool(_REPO_ID.match(name)) and not name.startswith(".")


def _hub(model: str, action: str) -> ModuleType:
    try:
        import huggingface_hub
    except ImportError:
        raise HubError(f"{model!r} is not a folder and {action} a Hugging Face Hub repo id needs "
                       f"huggingface_hub: {HUB_INSTALL} (or give a local model folder)") from None
    return huggingface_hub


def _hub_errors(hub: ModuleType) -> tuple[type[BaseException], ...]:
    extra = getattr(getattr(hub, "errors", None), "EntryNotFoundError", None)
    return (OSError, ValueError) + ((extra,) if isinstance(extra, type) else ())


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def resolve_model(model: str, *, revision: str | None = None, cache_dir: str | None = None,
                  local_files_only: bool | None = None) -> str:
    """The local folder of ``model``: an existing folder, else the snapshot of Hub
    repo ``model`` (downloaded into the Hub cache, or ``cache_dir``, if needed).

    ``local_files_only`` None: the ``HF_HUB_OFFLINE`` environment variable decides.
    """
    path = os.path.expanduser(model)
    if os.path.isdir(path):
        return path
    if not looks_like_repo_id(model):
        raise InputNotFoundError(f"model folder not found: {model} (give a folder written by "
                                 f"save_pretrained, or a Hugging Face Hub repo id owner/name)")
    hub = _hub(model, "loading")
    if local_files_only is None:
        local_files_only = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE
    try:
        return hub.snapshot_download(model, revision=revision, cache_dir=cache_dir,
                                     local_files_only=local_files_only,
                                     library_name="mit_semseg")
    except _hub_errors(hub) as exc:
        where = ("the local Hugging Face Hub cache (offline: HF_HUB_OFFLINE or "
                 "local_files_only)" if local_files_only else "the Hugging Face Hub")
        raise HubError(f"cannot get {model!r} from {where}, and there is no folder of that "
                       f"name: {type(exc).__name__}: {_first_line(exc)}") from None


def check_model_folder(folder: str) -> None:
    """Raise InputNotFoundError unless ``folder`` holds a model folder's config and
    weights; then check the files its ``SHA256SUMS`` lists (HashMismatchError)."""
    if not is_model_folder(folder):
        absent = [n for n in (MODEL_CONFIG, *MODEL_WEIGHTS.values())
                  if not os.path.isfile(os.path.join(folder, n))]
        raise InputNotFoundError(f"{folder} is not a model folder: {', '.join(absent)} missing "
                                 f"(write one with save_pretrained or python -m mit_semseg "
                                 f"models save)")
    verify_folder(folder)


def push_to_hub(folder: str, repo_id: str, *, private: bool | None = None,
                token: str | None = None, commit_message: str | None = None,
                revision: str | None = None) -> str:
    """Upload model folder ``folder`` to Hub repo ``repo_id`` (created if needed),
    after checking it (:func:`check_model_folder`); returns the commit URL."""
    check_model_folder(folder)
    if not looks_like_repo_id(repo_id):
        raise HubError(f"not a Hugging Face Hub repo id: {repo_id!r} (expected owner/name)")
    hub = _hub(repo_id, "uploading to")
    api = hub.HfApi(token=token, library_name="mit_semseg")
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        info = api.upload_folder(repo_id=repo_id, folder_path=folder, revision=revision,
                                 commit_message=commit_message or "Upload mit_semseg model",
                                 ignore_patterns=[".*", "*.part", "*.corrupt", "*.tmp"])
    except _hub_errors(hub) as exc:
        raise HubError(f"cannot upload {folder} to {repo_id!r}: {type(exc).__name__}: "
                       f"{_first_line(exc)} (log in with `hf auth login` or pass a token)") \
            from None
    return str(getattr(info, "commit_url", info))
