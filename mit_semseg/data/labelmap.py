"""Label maps: per-pixel class ids as a PNG that other tools read, and a JSON of
class shares beside it.

A label map holds one value per pixel, the class id in one of two conventions
(``LABEL_CONVENTIONS``):

* ``ade20k`` (the toolkit's default): value k + 1 for 0-based class k, 0 =
  unlabeled. Read back with ``DATASET.label_format ade20k``.
* ``zero_based``: value k for class k, ``ignore_label`` (default 255) =
  unlabeled (VOC, Cityscapes train ids). Read back with
  ``DATASET.label_format zero_based``.

Up to 255 classes the file is an 8-bit PNG; with a class table's colours it is
an indexed ("P") PNG whose palette gives index v the colour of the class it
stands for (unlabeled: ``unlabeled_color``), so image viewers show the colours
while every reader that takes palette indices (PIL, OpenCV with
IMREAD_UNCHANGED, the toolkit) gets the class ids. Above 255 classes it is a
16-bit grayscale PNG: PNG allows no palette at 16 bits, so the colours live
only in the class table and in the class-share JSON (``color`` of each class).

Predictions (0-based, no unlabeled pixels) and annotations (0-based with -1 =
unlabeled, as the datasets produce them) are written the same way: negative
values are unlabeled.
"""
from __future__ import annotations

import json
import os
from typing import Any, Mapping, Sequence

import numpy as np
from PIL import Image

from .io import LabelFormat, read_annotation

__all__ = ["LABEL_CONVENTIONS", "label_convention", "encode_label_map", "decode_label_map",
           "label_map_image", "write_label_map", "read_label_map", "class_shares",
           "write_class_shares"]

LABEL_CONVENTIONS = ("ade20k", "zero_based")


def label_convention(opt: Any) -> str:
    """The label-map convention of a config (cfg or its DATASET node): ``zero_based``
    for ``DATASET.label_format zero_based``, else ``ade20k`` (also for ``rgb``
    datasets, whose 8-bit label maps carry the class colours in their palette and
    so read back as colour-coded masks too)."""
    ds = opt.DATASET if hasattr(opt, "DATASET") else opt
    kind = str(getattr(ds, "label_format", "ade20k") or "ade20k").lower()
    return "zero_based" if kind == "zero_based" else "ade20k"


def _check_convention(convention: str) -> None:
    if convention not in LABEL_CONVENTIONS:
        raise ValueError(f"label convention {convention!r} is not one of {list(LABEL_CONVENTIONS)}")


def _unlabeled_value(convention: str, ignore_label: int) -> int:
    return 0 if convention == "ade20k" else int(ignore_label)


def _top_value(num_class: int, convention: str, ignore_label: int) -> int:
    """The largest value a map of ``num_class`` classes may hold."""
    if convention == "ade20k":
        return num_class
    return max(num_class - 1, int(ignore_label))


def encode_label_map(labels: np.ndarray, num_class: int, convention: str = "ade20k",
                     ignore_label: int = 255) -> np.ndarray:
    """0-based ``labels`` (H x W, negative = unlabeled) -> the file values of
    ``convention``: uint8 when ``num_class`` <= 255 (and, zero_based, the ignore
    value fits), else uint16. Labels >= ``num_class`` raise ValueError."""
    _check_convention(convention)
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be H x W, got shape {labels.shape}")
    if labels.size and int(labels.max()) >= num_class:
        raise ValueError(f"label {int(labels.max())} is not a class of num_class={num_class}")
    if convention == "zero_based" and 0 <= ignore_label < num_class:
        raise ValueError(f"ignore_label {ignore_label} is a class id (num_class={num_class})")
    top = _top_value(num_class, convention, ignore_label)
    if top > 65535:
        raise ValueError(f"{num_class} classes do not fit a 16-bit label map")
    dtype = np.uint8 if num_class <= 255 and top <= 255 else np.uint16
    unlabeled = labels < 0
    if convention == "zero_based" and ignore_label < 0 and unlabeled.any():
        raise ValueError("unlabeled pixels need an ignore_label >= num_class in the "
                         "zero_based convention")
    values = labels.astype(np.int64) + (1 if convention == "ade20k" else 0)
    values[unlabeled] = _unlabeled_value(convention, ignore_label)
    return values.astype(dtype)


def decode_label_map(values: np.ndarray, convention: str = "ade20k",
                     ignore_label: int = 255) -> np.ndarray:
    """Inverse of ``encode_label_map``: file values -> 0-based int64 labels, -1 unlabeled."""
    _check_convention(convention)
    values = np.asarray(values).astype(np.int64)
    if convention == "ade20k":
        return values - 1
    return np.where(values == int(ignore_label), -1, values)


def _palette(colors: np.ndarray, convention: str, ignore_label: int,
             unlabeled_color: Sequence[int]) -> list[int]:
    """768 palette bytes: index v -> the colour of the class value v stands for."""
    pal = np.zeros((256, 3), np.uint8)
    colors = np.asarray(colors, np.uint8).reshape(-1, 3)
    if convention == "ade20k":
        pal[0] = unlabeled_color
        pal[1:1 + len(colors)] = colors[:255]
    else:
        pal[:len(colors)] = colors[:256]
        if 0 <= ignore_label <= 255:
            pal[ignore_label] = unlabeled_color
    return pal.reshape(-1).tolist()


def label_map_image(labels: np.ndarray, num_class: int, colors: np.ndarray | None = None, *,
                    convention: str = "ade20k", ignore_label: int = 255,
                    unlabeled_color: Sequence[int] = (0, 0, 0)) -> Image.Image:
    """The label map of 0-based ``labels`` as a PIL image (see the module docstring):
    mode "P" with the palette of ``colors`` (num_class x 3) up to 255 classes, mode
    "L" without ``colors``, mode "I;16" above 255 classes."""
    values = encode_label_map(labels, num_class, convention, ignore_label)
    if values.dtype == np.uint16:
        return Image.fromarray(values)  # I;16: no palette at 16 bits
    if colors is None:
        return Image.fromarray(values, mode="L")
    colors = np.asarray(colors)
    if len(colors) < num_class:
        raise ValueError(f"{len(colors)} colours for {num_class} classes")
    img = Image.fromarray(values, mode="P")
    img.putpalette(_palette(colors, convention, ignore_label, unlabeled_color))
    return img


def write_label_map(path: str, labels: np.ndarray, num_class: int,
                    colors: np.ndarray | None = None, *, convention: str = "ade20k",
                    ignore_label: int = 255, unlabeled_color: Sequence[int] = (0, 0, 0)) -> None:
    """Write ``label_map_image(...)`` to ``path`` as PNG (zlib level 1, as
    ``io.write_png``), creating the folder."""
    img = label_map_image(labels, num_class, colors, convention=convention,
                          ignore_label=ignore_label, unlabeled_color=unlabeled_color)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    img.save(path, format="PNG", compress_level=1)


def read_label_map(path: str, num_class: int | None = None, *, convention: str = "ade20k",
                   ignore_label: int = 255) -> np.ndarray:
    """Read a label map written by ``write_label_map`` (or any annotation in
    ``convention``): 0-based int64 labels, -1 unlabeled. Values outside the
    convention raise DatasetError naming the file."""
    _check_convention(convention)
    fmt = LabelFormat(convention, num_class, ignore_label if convention == "zero_based" else -1)
    return read_annotation(path, num_class, fmt).astype(np.int64) - 1


def _hex(color: Sequence[int]) -> str:
    r, g, b = (int(c) for c in color)
    return f"#{r:02x}{g:02x}{b:02x}"


def class_shares(labels: np.ndarray, names: Mapping[int, str] | Sequence[str],
                 colors: np.ndarray | None = None, *, convention: str = "ade20k",
                 ignore_label: int = 255) -> dict[str, Any]:
    """What a label map holds, as a JSON-ready dict::

        {"width", "height", "convention", "unlabeled": {"value", "pixels", "share"},
         "classes": [{"id", "name", "value", "pixels", "share", "color"}, ...]}

    ``classes``: the classes present, largest first (ties by id); ``id`` is the
    0-based class, ``value`` its value in the file, ``share`` the fraction of all
    pixels (0..1), ``color`` "#rrggbb" when ``colors`` are given."""
    _check_convention(convention)
    labels = np.asarray(labels)
    lookup = dict(enumerate(names)) if not isinstance(names, Mapping) else names
    total = max(labels.size, 1)
    unlabeled = int((labels < 0).sum())
    ids, counts = np.unique(labels[labels >= 0], return_counts=True)
    order = np.lexsort((ids, -counts))
    offset = 1 if convention == "ade20k" else 0
    classes = []
    for i in order:
        k = int(ids[i])
        entry = {"id": k, "name": lookup.get(k, f"class_{k}"), "value": k + offset,
                 "pixels": int(counts[i]), "share": round(int(counts[i]) / total, 6)}
        if colors is not None and k < len(colors):
            entry["color"] = _hex(colors[k])
        classes.append(entry)
    height, width = labels.shape[:2]
    return {"width": int(width), "height": int(height), "convention": convention,
            "unlabeled": {"value": _unlabeled_value(convention, ignore_label),
                          "pixels": unlabeled, "share": round(unlabeled / total, 6)},
            "classes": classes}


def write_class_shares(path: str, shares: Mapping[str, Any]) -> None:
    """Write ``class_shares(...)`` as indented UTF-8 JSON, creating the folder."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(shares, fh, indent=1, ensure_ascii=False)
        fh.write("\n")

