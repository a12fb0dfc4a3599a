"""Web demo: upload a photo, see it parsed (``python -m mit_semseg web --cfg CFG``).

Needs the optional ``web`` extra (FastAPI, uvicorn, python-multipart):
``pip install -e '.[web]'``. ``create_app`` builds the ASGI app (page + JSON
API) from loaded models; see docs/web.md.
"""
from __future__ import annotations

import importlib.util
from typing import Any

from ..errors import MitSemsegError

__all__ = ["WebExtraMissing", "require_web", "create_app"]

_NEEDED = {"fastapi": "fastapi", "uvicorn": "uvicorn", "multipart": "python-multipart"}


class WebExtraMissing(MitSemsegError, ImportError):
    """A package of the ``web`` extra is not installed."""


def require_web() -> None:
    """Raise WebExtraMissing naming what to install when a ``web`` package is absent."""
    missing = [dist for module, dist in _NEEDED.items() if importlib.util.find_spec(module) is None]
    if missing:
        raise WebExtraMissing(f"the web demo needs the 'web' extra ({', '.join(missing)} not "
                              f"installed): pip install -e '.[web]'  (from the repository root; "
                              f"or: pip install 'mit_semseg[web]')")


def __getattr__(name: str) -> Any:
    if name == "create_app":
        require_web()
        from .app import create_app
        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
