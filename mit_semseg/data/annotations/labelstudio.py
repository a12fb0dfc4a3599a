"""Label Studio: import its JSON export (brush and polygon regions) into the
training layout, and write predictions as tasks with pre-annotations.

Import: the "JSON" export, a list of tasks. Of each task the last annotation
that was not cancelled is used (or, with ``use_predictions``, the last
prediction of a task without annotations); its regions are painted in the
order of its ``result`` list, later on top:

* ``brushlabels`` (``format`` "rle"): Label Studio's brush RLE of the RGBA
  picture at ``original_width`` x ``original_height``; a pixel is painted
  where its alpha is at least 128.
* ``polygonlabels``, ``rectanglelabels`` (with ``rotation``) and
  ``ellipselabels``: coordinates in percent of the image; a pixel is painted
  when its centre is inside (pixel k spans [k, k+1) in image coordinates).

Other result types (choices, text, key points, relations) mark no area and
are reported. The image is found from ``data.image`` under ``images`` (the
path after ``?d=`` for local files, the URL's path, its file name, and the
file name without the ``xxxxxxxx-`` prefix Label Studio gives uploads).

Export: one task per image, ``data.image`` = ``image_url_prefix`` + its
relative path, and one prediction whose ``result`` holds a ``brushlabels``
region (exact RLE) per 4-connected region of a class; with confidences, each
region's ``score`` and the prediction's mean ``score`` (Label Studio sorts
tasks by it), and regions below the review threshold get the region text
(``meta``) "review". ``close`` also writes the labeling config these tasks
fit (``label_studio_config.xml``).

The brush RLE is the bit-packed run-length format Label Studio's front end
reads (thi.ng's rle-pack): a 32-bit value count, the word size (5 bits) and
four run-length field sizes (4 bits each), then chunks of a repeat bit, a
2-bit size index, the run length - 1, and one value (repeat) or the literal
values. The only maintained Python implementation ships inside
label-studio-sdk (about 40 dependencies, one of them pinning numpy below the
version used here), so the toolkit reads and writes it itself; the tests
check it against that implementation when it is installed.
"""
from __future__ import annotations

import json
import math
import os
import re
from typing import Any, Callable, Sequence
from urllib.parse import parse_qs, unquote, urlparse
from xml.sax.saxutils import quoteattr

import numpy as np

from ._common import (AnnotationError, Classes, ImportProblem, ImportReport, Item, Malformed,
                      Shape, build_dataset, hex_color, polygon_mask, read_json, regions,
                      unique_keys)

__all__ = ["import_label_studio", "LabelStudioWriter", "encode_brush_rle", "decode_brush_rle"]

_RLE_SIZES = (3, 4, 8, 16)
_WORD = 8
_AREA_TYPES = ("brushlabels", "polygonlabels", "rectanglelabels", "ellipselabels")
_UPLOAD_PREFIX = re.compile(r"^[0-9a-f]{8}-")


# ============================================================================ brush RLE

def _bits(values: np.ndarray, widths: np.ndarray) -> np.ndarray:
    """The bits of ``values`` (each in ``widths`` bits, most significant first), packed."""
    widths = widths.astype(np.int64)
    starts = np.concatenate([[0], np.cumsum(widths)[:-1]])
    field = np.repeat(np.arange(len(values)), widths)
    shift = widths[field] - 1 - (np.arange(int(widths.sum())) - starts[field])
    return np.packbits(((values.astype(np.uint64)[field] >> shift.astype(np.uint64)) & 1)
                       .astype(np.uint8))


def encode_brush_rle(mask: np.ndarray) -> list[int]:
    """Label Studio's brush RLE of a bool/0-1 ``mask`` (H x W): the RGBA picture
    with every channel 255 on the mask, 0 elsewhere, flattened row by row."""
    flat = np.repeat(np.where(np.asarray(mask).reshape(-1), 255, 0).astype(np.uint8), 4)
    num = flat.size
    change = np.flatnonzero(np.diff(flat)) + 1
    starts = np.concatenate([[0], change]).astype(np.int64)
    lengths = np.diff(np.concatenate([starts, [num]]))
    values = flat[starts] if num else np.zeros(0, np.uint8)
    longest = 1 << _RLE_SIZES[-1]
    pieces = np.maximum(-(-lengths // longest), 1)  # runs longer than a field are split
    run_values = np.repeat(values, pieces)
    run_len = np.full(int(pieces.sum()), longest, np.int64)
    ends = np.cumsum(pieces) - 1
    run_len[ends] = lengths - (pieces - 1) * longest
    size_index = np.searchsorted((1 << np.asarray(_RLE_SIZES)) - 1, run_len - 1)
    field_bits = np.asarray(_RLE_SIZES)[size_index]
    n = len(run_len)
    header_v = np.array([num, _WORD - 1, *[s - 1 for s in _RLE_SIZES]], np.uint64)
    header_w = np.array([32, 5, 4, 4, 4, 4])
    chunk_v = np.stack([np.ones(n, np.uint64), size_index.astype(np.uint64),
                        (run_len - 1).astype(np.uint64), run_values.astype(np.uint64)], 1)
    chunk_w = np.stack([np.ones(n, np.int64), np.full(n, 2), field_bits, np.full(n, _WORD)], 1)
    return _bits(np.concatenate([header_v, chunk_v.reshape(-1)]),
                 np.concatenate([header_w, chunk_w.reshape(-1)])).tolist()


def decode_brush_rle(rle: Sequence[int]) -> np.ndarray:
    """Label Studio's brush RLE -> the flat value array it encodes (RGBA bytes of
    the picture, row by row). Raises Malformed on a truncated or invalid stream."""
    if not all(isinstance(b, int) and 0 <= b <= 255 for b in rle):
        raise Malformed("brush rle must be a list of bytes (0..255)")
    bits = np.unpackbits(np.asarray(rle, np.uint8))
    pos = 0

    def read(n: int) -> int:
        nonlocal pos
        if pos + n > len(bits):
            raise Malformed("brush rle ends early")
        value = 0
        for b in bits[pos:pos + n].tolist():
            value = (value << 1) | b
        pos += n
        return value

    num = read(32)
    word = read(5) + 1
    sizes = [read(4) + 1 for _ in range(4)]
    if num > (len(bits) // 4 + 1) * (1 << max(sizes)):  # more values than the stream can hold
        raise Malformed(f"brush rle claims {num} values")
    out = np.zeros(num, np.uint8 if word <= 8 else np.uint32)
    i = 0
    while i < num:
        repeat = read(1)
        j = i + 1 + read(sizes[read(2)])
        if j > num:
            raise Malformed("brush rle run goes past its value count")
        if repeat:
            out[i:j] = read(word)
        else:
            for k in range(i, j):
                out[k] = read(word)
        i = j
    return out


def _brush_mask(value: dict, height: int, width: int) -> np.ndarray:
    if value.get("format", "rle") != "rle" or not isinstance(value.get("rle"), list):
        raise Malformed(f"brush format {value.get('format')!r} without an 'rle' list")
    flat = decode_brush_rle(value["rle"])
    if flat.size != height * width * 4:
        raise Malformed(f"brush rle holds {flat.size} values, the {width}x{height} RGBA "
                        f"picture {height * width * 4}")
    return flat.reshape(height, width, 4)[:, :, 3] >= 128


# ============================================================================ regions in

def _number(value: dict, key: str) -> float:
    try:
        out = float(value[key])
    except (KeyError, TypeError, ValueError):
        raise Malformed(f"no number {key!r}") from None
    if not math.isfinite(out):
        raise Malformed(f"{key!r} is not finite")
    return out


def _percent_polygon(points: list[tuple[float, float]], height: int, width: int) -> np.ndarray:
    px = [(x * width / 100.0, y * height / 100.0) for x, y in points]
    return polygon_mask(px, height, width, outline=False, shift=-0.5)


def _rotated(cx: float, cy: float, pts: list[tuple[float, float]],
             degrees: float) -> list[tuple[float, float]]:
    a = math.radians(degrees)
    ca, sa = math.cos(a), math.sin(a)
    return [(cx + dx * ca - dy * sa, cy + dx * sa + dy * ca) for dx, dy in pts]


def _region_mask(kind: str, value: dict, height: int, width: int) -> np.ndarray:
    from ._common import parse_points
    if kind == "brushlabels":
        return _brush_mask(value, height, width)
    if kind == "polygonlabels":
        return _percent_polygon(parse_points(value.get("points"), 3), height, width)
    sx, sy = width / 100.0, height / 100.0
    x, y = _number(value, "x") * sx, _number(value, "y") * sy
    rotation = float(value.get("rotation") or 0.0)
    if kind == "rectanglelabels":
        w, h = _number(value, "width") * sx, _number(value, "height") * sy
        corners = _rotated(x, y, [(0, 0), (w, 0), (w, h), (0, h)], rotation)
        return polygon_mask(corners, height, width, outline=False, shift=-0.5)
    rx, ry = _number(value, "radiusX") * sx, _number(value, "radiusY") * sy
    ring = [(rx * math.cos(t), ry * math.sin(t))
            for t in np.linspace(0, 2 * math.pi, 96, endpoint=False)]
    return polygon_mask(_rotated(x, y, ring, rotation), height, width, outline=False,
                        shift=-0.5)


def _image_ref(data: Any) -> str | None:
    if not isinstance(data, dict):
        return None
    if isinstance(data.get("image"), str):
        return data["image"]
    strings = [v for v in data.values() if isinstance(v, str)]
    return strings[0] if len(strings) == 1 else None


def _candidates(ref: str) -> list[str]:
    """Relative paths under the images folder that ``data.image`` may name."""
    url = urlparse(ref)
    out = []
    local = parse_qs(url.query).get("d")
    if local:
        out.append(unquote(local[0]))
    path = unquote(url.path if url.scheme or url.query else ref).lstrip("/")
    out.append(path)
    base = os.path.basename(path)
    out += [base, _UPLOAD_PREFIX.sub("", base)]
    return list(dict.fromkeys(p for p in out if p))


def _find_image(ref: str, images: str) -> str | None:
    for rel in _candidates(ref):
        path = os.path.join(images, rel)
        if os.path.isfile(path):
            return os.path.normpath(path)
    return None


def _chosen(task: dict, use_predictions: bool) -> tuple[list | None, str]:
    done = [a for a in task.get("annotations") or [] if isinstance(a, dict)
            and not a.get("was_cancelled")]
    if done:
        return done[-1].get("result"), f"annotation {done[-1].get('id')}"
    preds = [p for p in task.get("predictions") or [] if isinstance(p, dict)]
    if use_predictions and preds:
        return preds[-1].get("result"), "prediction"
    return None, ""


def import_label_studio(tasks: str, out_dir: str, *, images: str | None = None,
                        classes: Sequence[str] | str | None = None, val_fraction: float = 0.0,
                        seed: int = 0, use_predictions: bool = False,
                        progress: Callable[[int, int], None] | None = None) -> ImportReport:
    """Import a Label Studio JSON export (``tasks``: the file) into ``out_dir``
    (images/, annotations/, training.odgt [+ validation.odgt], classes.csv); see
    the module docstring.

    ``images``: the folder the tasks' images are found under (default: the JSON
    file's folder). ``classes``: class names in id order or a class table CSV
    (default: an earlier import's ``out_dir/classes.csv``, else the sorted labels
    found). ``use_predictions``: tasks without an annotation use their last
    prediction. Raises AnnotationError when the file is not a Label Studio
    export; every skipped region or task is in the report (index: the region's
    position in the annotation's ``result``)."""
    doc = read_json(tasks)
    if isinstance(doc, dict) and "data" in doc:
        doc = [doc]
    if not isinstance(doc, list) or not all(isinstance(t, dict) and "data" in t for t in doc):
        raise AnnotationError(f"{tasks}: not a Label Studio JSON export (expected a list of "
                              f"tasks with 'data')")
    images = images if images is not None else os.path.dirname(os.path.abspath(tasks))
    report = ImportReport("label-studio", os.path.abspath(out_dir))
    found, rels, pending = [], [], []
    for t, task in enumerate(doc):
        ref = _image_ref(task.get("data"))
        file = f"{tasks} (task {task.get('id', t)}{', ' + ref if ref else ''})"
        result, which = _chosen(task, use_predictions)
        if result is None:
            report.problems.append(ImportProblem(file, None, "no annotation; left out"))
            continue
        path = _find_image(ref, images) if ref else None
        shapes, declared = _shapes(result if isinstance(result, list) else [], file, report)
        rels.append(os.path.relpath(path, images) if path else (ref or f"task_{t}"))
        missing = "" if path else (f"image {ref!r} not found under {images}; left out" if ref
                                   else "no image in 'data'; left out")
        pending.append(Item("", path, f"{file} [{which}]", declared, shapes, missing))
        found += [s.label for s in shapes]
    for item, key in zip(pending, unique_keys([r.replace(os.sep, "/") for r in rels])):
        item.key = key
    cls = Classes.resolve(classes, out_dir, None, found)
    return build_dataset(pending, out_dir, cls, report, val_fraction, seed, progress)


def _shapes(result: list, file: str,
            report: ImportReport) -> tuple[list[Shape], tuple[int, int] | None]:
    shapes, declared = [], None
    for i, res in enumerate(result):
        kind = res.get("type") if isinstance(res, dict) else None
        value = res.get("value") if isinstance(res, dict) else None
        if kind not in _AREA_TYPES or not isinstance(value, dict):
            report.problems.append(ImportProblem(file, i, f"result type {kind!r} marks no "
                                                          f"area; skipped"))
            continue
        names = value.get(kind)
        if not (isinstance(names, list) and names and all(isinstance(n, str) for n in names)):
            report.problems.append(ImportProblem(file, i, f"{kind} region without a label; "
                                                          f"skipped"))
            continue
        if len(names) > 1:
            report.problems.append(ImportProblem(file, i, f"{kind} region with several labels "
                                                          f"{names}; painted as {names[0]!r}"))
        size = (res.get("original_width"), res.get("original_height"))
        if all(isinstance(v, int) for v in size):
            declared = declared or size
        shapes.append(Shape(names[0], file, i,
                            lambda h, w, kind=kind, value=value: _region_mask(kind, value, h, w)))
    return shapes, declared


# ============================================================================ export

class LabelStudioWriter:
    """Collects predictions and writes Label Studio tasks with pre-annotations
    (``close``: ``path`` and ``label_studio_config.xml`` beside it); see the
    module docstring. ``from_name`` / ``to_name``: the names of the BrushLabels
    and Image tags of the project's labeling config."""

    def __init__(self, path: str, names: Sequence[str], colors: np.ndarray, *,
                 image_url_prefix: str = "", review_below: float | None = None,
                 model_version: str = "mit_semseg", from_name: str = "label",
                 to_name: str = "image") -> None:
        self.path, self.names, self.colors = path, list(names), np.asarray(colors)
        self.prefix, self.review_below, self.version = image_url_prefix, review_below, model_version
        self.from_name, self.to_name = from_name, to_name
        self.tasks: list[dict] = []

    def add(self, file_name: str, labels: np.ndarray,
            confidence: np.ndarray | None = None) -> None:
        """Add a task for the image ``file_name`` (relative path) and ``labels``
        (H x W, 0-based; -1 unlabeled: no region)."""
        height, width = labels.shape
        result = []
        for region in regions(labels, confidence, self.review_below):
            item = {"id": f"r{len(result) + 1}", "from_name": self.from_name,
                    "to_name": self.to_name, "type": "brushlabels",
                    "original_width": int(width), "original_height": int(height),
                    "image_rotation": 0,
                    "value": {"format": "rle",
                              "rle": encode_brush_rle(region.full_mask(height, width)),
                              "brushlabels": [self.names[region.class_id]]}}
            if region.confidence is not None:
                item["score"] = round(region.confidence, 4)
            if region.review:
                item["meta"] = {"text": [f"review: mean confidence {region.confidence:.3f}"]}
            result.append(item)
        prediction: dict[str, Any] = {"model_version": self.version, "result": result}
        if confidence is not None:
            prediction["score"] = round(float(np.mean(confidence, dtype=np.float64)), 4)
        self.tasks.append({"data": {self.to_name: self.prefix + file_name.replace(os.sep, "/")},
                           "predictions": [prediction]})

    def label_config(self) -> str:
        """The labeling config (XML) the tasks fit: an Image and BrushLabels with
        every class and its colour."""
        rows = "\n".join(f"    <Label value={quoteattr(n)} background={quoteattr(hex_color(c))}/>"
                         for n, c in zip(self.names, self.colors.tolist()))
        return (f"<View>\n  <Image name={quoteattr(self.to_name)} value=\"${self.to_name}\" "
                f"zoom=\"true\"/>\n  <BrushLabels name={quoteattr(self.from_name)} "
                f"toName={quoteattr(self.to_name)}>\n{rows}\n  </BrushLabels>\n</View>\n")

    def close(self) -> list[str]:
        """Write the tasks and the labeling config; returns their paths."""
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        with open(self.path, "w", encoding="utf-8") as fh:
            json.dump(self.tasks, fh, ensure_ascii=False)
        config = os.path.join(os.path.dirname(os.path.abspath(self.path)),
                              "label_studio_config.xml")
        with open(config, "w", encoding="utf-8") as fh:
            fh.write(self.label_config())
        return [self.path, config]
