"""COCO JSON (instances, COCO-Stuff): import into the training layout, and write
predictions as RLE annotations. Needs pycocotools (``pip install -e '.[coco]'``).

Import: each image of ``images`` with its annotations, painted in the order
they appear in the file (later on top). ``segmentation`` may be polygons
(rasterised by pycocotools as the COCO API does: coordinates are continuous,
pixel k spans [k, k+1)), uncompressed RLE (``counts`` a list, e.g. crowds) or
compressed RLE (``counts`` a string, COCO-Stuff). Classes are the categories
in id order (renumbered 1..N in the class table; names kept). ``iscrowd``
regions are painted as their class, or as unlabeled with ``crowd="unlabeled"``.

Export: one annotation per 4-connected region of a class, ``segmentation`` as
compressed RLE (exact), ``iscrowd`` 0 (as COCO-Stuff), ``category_id`` = the
class id + 1 (the ADE20K-convention value of the label maps), plus ``score``
(mean confidence) and ``review`` when confidences are given.
"""
from __future__ import annotations

import json
import os
from collections import defaultdict
from typing import Any, Callable, Sequence

import numpy as np

from ._common import (AnnotationError, Classes, ImportProblem, ImportReport, Item, Malformed,
                      Shape, build_dataset, read_json, regions, require, unique_keys)

__all__ = ["import_coco", "CocoWriter"]


def _mask_api() -> Any:
    return require("pycocotools.mask", "coco", "COCO import and export")


def _rle_string_total(counts: str) -> int | None:
    """Sum of the run lengths of a compressed COCO RLE string, None if malformed.

    pycocotools decodes a string whose runs cover less than the image into
    uninitialised memory, so the total is checked first. The format (the COCO
    API's rleToString): runs as 5-bit groups, lowest first, offset by 48 into
    printable characters; 0x20 continues a number, 0x10 in its last group is
    the sign; from the third run on the value is the difference to the run two
    before."""
    runs: list[int] = []
    pos, n = 0, len(counts)
    while pos < n:
        value, shift, more = 0, 0, True
        while more:
            if pos >= n:
                return None
            c = ord(counts[pos]) - 48
            if not 0 <= c < 64:
                return None
            value |= (c & 0x1F) << shift
            more = bool(c & 0x20)
            pos += 1
            shift += 5
            if not more and c & 0x10:
                value -= 1 << shift
        if len(runs) > 2:
            value += runs[-2]
        if value < 0:
            return None
        runs.append(value)
    return sum(runs)


def _check_rle(seg: dict, height: int, width: int) -> dict:
    """A validated RLE dict (counts list or str) for pycocotools, else Malformed."""
    size = seg.get("size")
    if not (isinstance(size, (list, tuple)) and len(size) == 2 and list(size) == [height, width]):
        raise Malformed(f"RLE size {size!r} is not the image's [height, width] = "
                        f"[{height}, {width}]")
    counts = seg.get("counts")
    if isinstance(counts, list):
        if not all(isinstance(c, int) and c >= 0 for c in counts):
            raise Malformed("RLE counts must be non-negative integers")
        if sum(counts) != height * width:
            raise Malformed(f"RLE counts cover {sum(counts)} pixels, the image "
                            f"{height * width}")
        return {"size": [height, width], "counts": counts}
    if isinstance(counts, (str, bytes)):
        text = counts.decode("ascii", "replace") if isinstance(counts, bytes) else counts
        total = _rle_string_total(text)
        if total != height * width:
            raise Malformed("compressed RLE counts are corrupt" if total is None else
                            f"compressed RLE counts cover {total} pixels, the image "
                            f"{height * width}")
        return {"size": [height, width], "counts": text.encode("ascii")}
    raise Malformed("RLE without 'counts' (a list or a string)")


def _polygons(seg: list, file: str, index: int, where: str,
              problems: list[ImportProblem]) -> list[list[float]]:
    """The well-formed polygons of a segmentation list; the others are reported."""
    good = []
    for j, poly in enumerate(seg):
        ok = isinstance(poly, list) and all(isinstance(v, (int, float)) and np.isfinite(v)
                                            for v in poly)
        if not ok or len(poly) < 6 or len(poly) % 2:
            what = f"{len(poly)} numbers" if isinstance(poly, list) else type(poly).__name__
            problems.append(ImportProblem(file, index, f"{where}: polygon {j} is malformed "
                                          f"({what}; needs x,y pairs, at least 3); skipped"))
            continue
        good.append([float(v) for v in poly])
    return good


def _annotation_mask(seg: Any, height: int, width: int) -> np.ndarray:
    import warnings
    mask_api = _mask_api()
    if isinstance(seg, list):
        rles = mask_api.frPyObjects(seg, height, width)
        rle = mask_api.merge(rles) if len(rles) > 1 else rles[0]
    else:
        rle = _check_rle(seg, height, width)
        if isinstance(rle["counts"], list):
            rle = mask_api.frPyObjects(rle, height, width)
    with warnings.catch_warnings():  # pycocotools' numpy 2 copy= notice, not ours to fix
        warnings.simplefilter("ignore", DeprecationWarning)
        return mask_api.decode(rle).astype(bool)


def import_coco(annotations: str, out_dir: str, *, images: str | None = None,
                classes: Sequence[str] | str | None = None, val_fraction: float = 0.0,
                seed: int = 0, crowd: str = "class",
                progress: Callable[[int, int], None] | None = None) -> ImportReport:
    """Import a COCO JSON file into ``out_dir`` (images/, annotations/,
    training.odgt [+ validation.odgt], classes.csv); see the module docstring.

    ``images``: the folder ``file_name`` is relative to (default: the JSON file's
    folder). ``classes``: class names in id order or a class table CSV (default:
    an earlier import's ``out_dir/classes.csv``, else the categories in id order);
    annotations of other categories are reported as unknown classes. ``crowd``:
    "class" or "unlabeled". Raises AnnotationError when the file is not COCO
    JSON; every skipped annotation or image is in the report (index: its position
    in ``annotations``)."""
    _mask_api()
    if crowd not in ("class", "unlabeled"):
        raise ValueError(f"crowd must be 'class' or 'unlabeled', got {crowd!r}")
    doc = read_json(annotations)
    if not isinstance(doc, dict) or not all(isinstance(doc.get(k), list)
                                            for k in ("images", "annotations", "categories")):
        raise AnnotationError(f"{annotations}: not COCO JSON (expected lists 'images', "
                              f"'annotations' and 'categories')")
    images = images if images is not None else os.path.dirname(os.path.abspath(annotations))
    report = ImportReport("coco", os.path.abspath(out_dir))
    problems = report.problems

    category = {}
    for c in sorted((c for c in doc["categories"] if isinstance(c, dict) and "id" in c),
                    key=lambda c: c["id"]):
        category[c["id"]] = str(c.get("name", f"category_{c['id']}"))
    format_names = list(dict.fromkeys(category.values()))

    entries = {}
    for i, im in enumerate(doc["images"]):
        if not (isinstance(im, dict) and "id" in im and isinstance(im.get("file_name"), str)):
            problems.append(ImportProblem(annotations, None, f"images[{i}] has no id or "
                                                             f"file_name; skipped"))
            continue
        entries[im["id"]] = im
    by_image: dict[Any, list[Shape]] = defaultdict(list)
    for i, ann in enumerate(doc["annotations"]):
        shape = _shape(ann, i, annotations, entries, category, crowd, problems)
        if shape is not None:
            by_image[ann["image_id"]].append(shape)

    ordered = list(entries.values())
    keys = unique_keys([im["file_name"] for im in ordered])
    items = []
    for im, key in zip(ordered, keys):
        path = os.path.join(images, im["file_name"])
        declared = (im["width"], im["height"]) if isinstance(im.get("width"), int) and \
            isinstance(im.get("height"), int) else None
        exists = os.path.isfile(path)
        items.append(Item(key, path if exists else None, f"{annotations} (image id {im['id']}, "
                          f"{im['file_name']})", declared, by_image.get(im["id"], []),
                          "" if exists else f"image file {path} not found; left out",
                          oriented_first=False))
    cls = Classes.resolve(classes, out_dir, format_names, [], _category_colors(doc, category))
    return build_dataset(items, out_dir, cls, report, val_fraction, seed, progress)


def _category_colors(doc: dict, category: dict) -> np.ndarray | None:
    """Colours of the categories when every one has ``color`` [r, g, b] (panoptic style)."""
    colors = []
    for c in sorted(doc["categories"], key=lambda c: c.get("id", 0) if isinstance(c, dict) else 0):
        value = c.get("color") if isinstance(c, dict) else None
        if not (isinstance(value, list) and len(value) == 3):
            return None
        colors.append(value)
    return np.asarray(colors, np.uint8) if len(colors) == len(set(category.values())) else None


def _shape(ann: Any, i: int, file: str, entries: dict, category: dict, crowd: str,
           problems: list[ImportProblem]) -> Shape | None:
    if not isinstance(ann, dict):
        problems.append(ImportProblem(file, i, "annotation is not an object; skipped"))
        return None
    where = f"annotation id {ann.get('id')}"
    im = entries.get(ann.get("image_id"))
    if im is None:
        problems.append(ImportProblem(file, i, f"{where}: unknown image_id "
                                               f"{ann.get('image_id')!r}; skipped"))
        return None
    label = category.get(ann.get("category_id"))
    if label is None:
        problems.append(ImportProblem(file, i, f"{where} ({im['file_name']}): unknown class "
                                               f"(category_id {ann.get('category_id')!r} is "
                                               f"not in 'categories'); skipped"))
        return None
    seg = ann.get("segmentation")
    if isinstance(seg, list):
        seg = _polygons(seg, file, i, where, problems)
        if not seg:
            problems.append(ImportProblem(file, i, f"{where} ({im['file_name']}): no usable "
                                                   f"polygon; skipped"))
            return None
    elif not isinstance(seg, dict):
        problems.append(ImportProblem(file, i, f"{where} ({im['file_name']}): no segmentation "
                                               f"(polygons or RLE); skipped"))
        return None
    if ann.get("iscrowd") and crowd == "unlabeled":
        label = "__ignore__"

    def mask(height: int, width: int, seg: Any = seg) -> np.ndarray:
        try:
            return _annotation_mask(seg, height, width)
        except Malformed:
            raise
        except Exception as exc:  # pycocotools' own complaints
            raise Malformed(str(exc)) from None
    return Shape(label, file, i, mask)


# ============================================================================ export

class CocoWriter:
    """Collects predictions and writes one COCO JSON file (``close``): images,
    categories (id = class id + 1, name, color) and one RLE annotation per
    4-connected region. ``file_name``: the image's path relative to the folder the
    tool will find it in. ``review_below``: regions whose mean confidence is lower
    get ``"review": true``."""

    def __init__(self, path: str, names: Sequence[str], colors: np.ndarray, *,
                 review_below: float | None = None) -> None:
        self.mask_api = _mask_api()
        self.path, self.names, self.colors = path, list(names), np.asarray(colors)
        self.review_below = review_below
        self.images: list[dict] = []
        self.annotations: list[dict] = []

    def add(self, file_name: str, labels: np.ndarray,
            confidence: np.ndarray | None = None) -> None:
        """Add an image's ``labels`` (H x W, 0-based, -1 unlabeled: no annotation)."""
        height, width = labels.shape
        image_id = len(self.images) + 1
        self.images.append({"id": image_id, "file_name": file_name.replace(os.sep, "/"),
                            "width": int(width), "height": int(height)})
        canvas = np.zeros((height, width), np.uint8, order="F")
        for region in regions(labels, confidence, self.review_below):
            y0, x0, y1, x1 = region.box
            canvas[y0:y1, x0:x1] = region.mask
            rle = self.mask_api.encode(canvas)
            canvas[y0:y1, x0:x1] = 0
            ann = {"id": len(self.annotations) + 1, "image_id": image_id,
                   "category_id": region.class_id + 1,
                   "segmentation": {"size": [int(height), int(width)],
                                    "counts": rle["counts"].decode("ascii")},
                   "area": region.pixels, "bbox": [int(x0), int(y0), int(x1 - x0), int(y1 - y0)],
                   "iscrowd": 0}
            if region.confidence is not None:
                ann["score"] = round(region.confidence, 4)
                ann["review"] = region.review
            self.annotations.append(ann)

    def close(self) -> list[str]:
        """Write the JSON file; returns [its path]."""
        categories = [{"id": k + 1, "name": n, "supercategory": "",
                       "color": [int(c) for c in self.colors[k]]}
                      for k, n in enumerate(self.names)]
        doc = {"info": {"description": "mit_semseg predictions"}, "licenses": [],
               "images": self.images, "annotations": self.annotations, "categories": categories}
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        with open(self.path, "w", encoding="utf-8") as fh:
            json.dump(doc, fh, ensure_ascii=False)
        return [self.path]

