"""LabelMe JSON (one file per image): import into the training layout, and write
predictions as polygons.

Import: every ``*.json`` under a folder (recursively) with a ``shapes`` list.
Shapes are painted in file order, later on top, with LabelMe's own rule
(``labelme.utils.shape_to_mask``): polygon vertices are pixel centres and a
polygon covers the pixels whose centres are inside it plus those its edges
pass through. Supported ``shape_type``: polygon, rectangle, circle, mask
(``mask``: a base64 PNG placed at the first point, rounded). Points, lines and
line strips mark no area: they are reported and skipped. The label
``__ignore__`` paints unlabeled pixels (LabelMe's labelme2voc convention). The
image is ``imagePath`` relative to the JSON file (or the ``images`` folder),
else the embedded ``imageData``.

Export: each 4-connected region of a class becomes one polygon (OpenCV's
border following of the region's outer boundary through its boundary pixels'
centres, simplified by Douglas-Peucker with ``tolerance`` pixels), larger
regions first, so that drawing them in order (later on top, as the import
does) gives back the label map: regions inside a hole of another are smaller
and drawn after it. Unlabeled holes get ``__ignore__`` polygons. With
``tolerance`` 0 the round trip is exact; see docs/custom-dataset.md for the
share of pixels each tolerance changes.
"""
from __future__ import annotations

import base64
import io
import json
import math
import os
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image, ImageDraw

from ._common import (IGNORE_LABEL, AnnotationError, Classes, ImportReport, Item, Malformed,
                      Shape, build_dataset, parse_points, polygon_mask, regions, require,
                      unique_keys)

__all__ = ["import_labelme", "LabelMeWriter", "DEFAULT_TOLERANCE"]

DEFAULT_TOLERANCE = 1.0  # Douglas-Peucker tolerance of exported polygons, in pixels
_NO_AREA = ("point", "line", "linestrip", "points")


def _shape_mask(shape: dict, height: int, width: int) -> np.ndarray:
    kind = shape.get("shape_type") or "polygon"
    if kind == "polygon":
        return polygon_mask(parse_points(shape.get("points"), 3), height, width, outline=True)
    if kind == "rectangle":
        (x0, y0), (x1, y1) = parse_points(shape.get("points"), 2)[:2]
        img = Image.new("1", (width, height), 0)
        ImageDraw.Draw(img).rectangle([min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)],
                                      fill=1, outline=1)
        return np.asarray(img, dtype=bool)
    if kind == "circle":
        (cx, cy), (px, py) = parse_points(shape.get("points"), 2)[:2]
        r = math.hypot(cx - px, cy - py)
        img = Image.new("1", (width, height), 0)
        ImageDraw.Draw(img).ellipse([cx - r, cy - r, cx + r, cy + r], fill=1, outline=1)
        return np.asarray(img, dtype=bool)
    if kind == "mask":
        return _mask_shape(shape, height, width)
    raise Malformed(f"unsupported shape_type {kind!r}")


def _mask_shape(shape: dict, height: int, width: int) -> np.ndarray:
    (x0, y0), *_ = parse_points(shape.get("points"), 1)
    data = shape.get("mask")
    if not isinstance(data, str):
        raise Malformed("shape_type mask without a base64 'mask' PNG")
    try:
        with Image.open(io.BytesIO(base64.b64decode(data))) as img:
            part = np.asarray(img.convert("L")) > 0
    except Exception as exc:
        raise Malformed(f"cannot decode its mask PNG: {exc}") from None
    out = np.zeros((height, width), bool)
    x0, y0 = int(round(x0)), int(round(y0))
    ys, xs = slice(max(y0, 0), min(y0 + part.shape[0], height)), \
        slice(max(x0, 0), min(x0 + part.shape[1], width))
    if ys.start < ys.stop and xs.start < xs.stop:
        out[ys, xs] = part[ys.start - y0:ys.stop - y0, xs.start - x0:xs.stop - x0]
    return out


def _read_json(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise Malformed(f"cannot read JSON: {exc}") from None


def _item(path: str, key: str, doc: dict, images: str | None, report: ImportReport) -> Item:
    shapes = []
    for i, raw in enumerate(doc.get("shapes") or []):
        if not isinstance(raw, dict) or not isinstance(raw.get("label"), str):
            report.problems.append(_problem(path, i, "not a shape with a 'label'; skipped"))
            continue
        kind = raw.get("shape_type") or "polygon"
        if kind in _NO_AREA:
            report.problems.append(_problem(path, i, f"{raw['label']!r} shape_type {kind!r} "
                                                     f"marks no area; skipped"))
            continue
        shapes.append(Shape(raw["label"], path, i,
                            lambda h, w, raw=raw: _shape_mask(raw, h, w)))
    declared = None
    if isinstance(doc.get("imageWidth"), int) and isinstance(doc.get("imageHeight"), int):
        declared = (doc["imageWidth"], doc["imageHeight"])
    image, missing = _find_image(path, doc, images)
    return Item(key, image, path, declared, shapes, missing)


def _find_image(path: str, doc: dict, images: str | None) -> tuple[str | bytes | None, str]:
    rel = doc.get("imagePath") or ""
    candidates = []
    if rel:
        rel = rel.replace("\\", "/")
        candidates.append(os.path.join(os.path.dirname(path), rel))
        if images:
            candidates += [os.path.join(images, rel), os.path.join(images, os.path.basename(rel))]
    for cand in candidates:
        if os.path.isfile(cand):
            return os.path.normpath(cand), ""
    if doc.get("imageData"):
        try:
            return base64.b64decode(doc["imageData"]), ""
        except (ValueError, TypeError):
            return None, "imageData is not valid base64 and imagePath was not found; left out"
    return None, (f"image {rel!r} not found (looked in {', '.join(candidates) or 'nowhere'})"
                  f" and no imageData; left out")


def _problem(path: str, index: int | None, message: str):
    from ._common import ImportProblem
    return ImportProblem(path, index, message)


def import_labelme(source: str, out_dir: str, *, images: str | None = None,
                   classes: Sequence[str] | str | None = None, val_fraction: float = 0.0,
                   seed: int = 0,
                   progress: Callable[[int, int], None] | None = None) -> ImportReport:
    """Import the LabelMe JSON files under ``source`` (a folder, searched
    recursively, or one file) into ``out_dir`` (images/, annotations/,
    training.odgt [+ validation.odgt], classes.csv); see the module docstring.

    ``images``: a folder to look for images not found at ``imagePath``.
    ``classes``: class names in id order, or a class table CSV (ids then match an
    earlier dataset); default: ``out_dir/classes.csv`` of an earlier import, else
    the sorted labels found. ``val_fraction`` of the images (drawn with ``seed``)
    go to validation.odgt. Raises AnnotationError when ``source`` holds no
    LabelMe file; every other problem is in the report."""
    if os.path.isdir(source):
        files = sorted(os.path.join(d, f) for d, _, names in os.walk(source) for f in names
                       if f.lower().endswith(".json"))
        base = source
    elif os.path.isfile(source):
        files, base = [source], os.path.dirname(source)
    else:
        raise AnnotationError(f"{source}: no such file or folder")
    report = ImportReport("labelme", os.path.abspath(out_dir))
    docs = []
    for path in files:
        try:
            doc = _read_json(path)
        except Malformed as exc:
            report.problems.append(_problem(path, None, f"{exc}; skipped"))
            continue
        if not isinstance(doc, dict) or "shapes" not in doc:
            report.problems.append(_problem(path, None, "not a LabelMe file (no 'shapes'); "
                                                        "skipped"))
            continue
        docs.append((path, doc))
    if not docs:
        raise AnnotationError(f"{source}: no LabelMe JSON file (with a 'shapes' list) found")
    keys = unique_keys([os.path.relpath(p, base) for p, _ in docs])
    items = [_item(p, k, d, images, report) for (p, d), k in zip(docs, keys)]
    found = [s.label for it in items for s in it.shapes]
    cls = Classes.resolve(classes, out_dir, None, found)
    return build_dataset(items, out_dir, cls, report, val_fraction, seed, progress)


# ============================================================================ export

class LabelMeWriter:
    """Writes one LabelMe JSON per image into ``out_dir`` (``<name>.json``,
    ``imagePath`` relative to it): one polygon per region (see the module
    docstring). ``review_below``: regions whose mean confidence is lower get the
    flag ``review`` (and their confidence in ``description``)."""

    def __init__(self, out_dir: str, names: Sequence[str], *, tolerance: float = DEFAULT_TOLERANCE,
                 review_below: float | None = None) -> None:
        self.cv2 = require("cv2", "polygons", "LabelMe polygons")
        if tolerance < 0:
            raise ValueError(f"tolerance must be >= 0 pixels, got {tolerance}")
        self.out_dir, self.names = out_dir, list(names)
        self.tolerance, self.review_below = float(tolerance), review_below
        self.written: list[str] = []

    def _polygon(self, region: Any) -> tuple[list[list[float]], float]:
        """The region's outer border as polygon points (image coordinates) and the
        area inside the unsimplified border (the drawing order)."""
        cv2 = self.cv2
        y0, x0, _, _ = region.box
        padded = np.pad(region.mask.astype(np.uint8), 1)
        contours, _ = cv2.findContours(padded, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        contour = max(contours, key=len)  # a 4-connected region has one outer border
        area = abs(cv2.contourArea(contour))
        if self.tolerance > 0:
            simple = cv2.approxPolyDP(contour, self.tolerance, True)
            if len(simple) >= 3:
                contour = simple
        pts = contour.reshape(-1, 2).astype(np.float64) + (x0 - 1, y0 - 1)
        points = pts.tolist()
        while len(points) < 3:  # one- or two-pixel regions: a degenerate polygon
            points.append(points[-1])
        return points, area

    def add(self, image_path: str, name: str, labels: np.ndarray,
            confidence: np.ndarray | None = None) -> str:
        """Write ``<out_dir>/<name>.json`` for ``labels`` (H x W, 0-based, -1
        unlabeled) of the image at ``image_path``; returns the JSON path."""
        height, width = labels.shape
        shapes = []
        for region in regions(labels, confidence, self.review_below, include_unlabeled=True):
            points, area = self._polygon(region)
            label = IGNORE_LABEL if region.class_id < 0 else self.names[region.class_id]
            shape = {"label": label, "points": points, "group_id": None,
                     "description": "" if region.confidence is None
                     else f"confidence {region.confidence:.3f}",
                     "shape_type": "polygon", "flags": {"review": True} if region.review else {},
                     "mask": None}
            shapes.append((area, len(shapes), shape))
        # larger first: a region inside another's hole comes after it (later on top)
        shapes.sort(key=lambda t: (-t[0], t[1]))
        path = os.path.join(self.out_dir, name + ".json")
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        rel = os.path.relpath(os.path.abspath(image_path), os.path.dirname(os.path.abspath(path)))
        doc = {"version": "5.5.0", "flags": {}, "shapes": [s for _, _, s in shapes],
               "imagePath": rel.replace(os.sep, "/"), "imageData": None,
               "imageHeight": int(height), "imageWidth": int(width)}
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(doc, fh, ensure_ascii=False, indent=1)
        self.written.append(path)
        return path

    def close(self) -> list[str]:
        """The files written."""
        return list(self.written)
