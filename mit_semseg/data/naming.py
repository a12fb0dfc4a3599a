"""Names of result files: one output name per input image (``result_names``) and
the companion files written beside an output (``companion_names``).

Shared by prediction (test.py's PNGs, confidence maps, probability files) and
evaluation (``VAL.visualize``'s PNGs), so both name an image's results the same
way. Pure path arithmetic: nothing is read or written.
"""
from __future__ import annotations

import os
from collections import Counter
from typing import Sequence

__all__ = ["result_names", "companion_names"]


def result_names(paths: Sequence[str], base: str | None = None) -> list[str]:
    """One output name per input path: its path relative to ``base`` (default: the
    inputs' common folder) with the extension replaced by ``.png``. Names that
    would clash keep their extension (``a.jpg.png``, ``a.png.png``); remaining
    clashes get ``_2``, ``_3``... Comparison ignores case."""
    if not paths:
        return []
    absolute = [os.path.abspath(p) for p in paths]
    if base is None:
        base = os.path.commonpath([os.path.dirname(p) for p in absolute])
    rel = [os.path.relpath(p, os.path.abspath(base)) for p in absolute]
    rel = [r if not r.startswith("..") else os.path.basename(r) for r in rel]
    names = [os.path.splitext(r)[0] + ".png" for r in rel]
    clash = Counter(n.lower() for n in names)
    names = [r + ".png" if clash[n.lower()] > 1 else n for n, r in zip(names, rel)]
    out: list[str] = []
    used: set[str] = set()
    for name in names:
        candidate, k = name, 2
        while candidate.lower() in used:
            candidate, k = f"{name[:-4]}_{k}.png", k + 1
        used.add(candidate.lower())
        out.append(candidate)
    return out


def companion_names(outputs: Sequence[str], suffix: str, taken: set[str]) -> list[str]:
    """``<output without .png><suffix>`` per output, made unique (``_2``, ``_3``...)
    against ``taken`` (absolute paths, compared ignoring case; updated)."""
    used = {p.lower() for p in taken}
    out = []
    for path in outputs:
        stem, ext = os.path.splitext(os.path.splitext(path)[0] + suffix)
        candidate, k = stem + ext, 2
        while os.path.abspath(candidate).lower() in used:
            candidate, k = f"{stem}_{k}{ext}", k + 1
        used.add(os.path.abspath(candidate).lower())
        taken.add(os.path.abspath(candidate))
        out.append(candidate)
    return out
