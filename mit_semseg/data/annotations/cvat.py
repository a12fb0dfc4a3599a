"""CVAT's "Segmentation mask 1.1" export (a Pascal VOC style archive): import into
the training layout, and write predictions as such an archive.

Layout (a .zip or the folder it unpacks to)::

    labelmap.txt                      # name:R,G,B:parts:actions, one label a line
    ImageSets/Segmentation/default.txt
    SegmentationClass/<image id>.png  # each pixel the colour of its label
    SegmentationObject/<image id>.png # (instances; not used)
    JPEGImages/<image id>.jpg         # only when exported with images

The label named ``background`` (black by default) is unlabeled; every other
label of labelmap.txt is a class, in its order. Without labelmap.txt the 21
Pascal VOC labels and colours are assumed, as CVAT does. A colour that is not
in the label map is reported with its pixel count and left unlabeled.
Single-channel masks hold the label's row in labelmap.txt.

Export writes labelmap.txt (``background`` black, then the classes with the
class table's colours; repeated or black colours are replaced by distinct
ones), the image list and one RGB class mask per image. A mask format carries
no flags: regions below the review threshold are left as background, for the
labeler to draw.
"""
from __future__ import annotations

import io
import os
import zipfile
from typing import Callable, Sequence

import numpy as np
from PIL import Image

from ..classes import generated_palette
from ..io import IMAGE_EXTENSIONS
from ._common import (AnnotationError, Classes, ImportProblem, ImportReport, Item, Shape,
                      build_dataset, regions)

__all__ = ["import_cvat_masks", "CvatMaskWriter", "VOC_LABELS"]

VOC_LABELS = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car",
              "cat", "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person",
              "pottedplant", "sheep", "sofa", "train", "tvmonitor")
_BACKGROUND = "background"


def _voc_colors(n: int) -> np.ndarray:
    """Pascal VOC's label colours: the bits of the index spread over R, G, B from
    the most significant bit down."""
    out = np.zeros((n, 3), np.uint8)
    for i in range(n):
        value, r, g, b = i, 0, 0, 0
        for bit in range(8):
            r |= ((value >> 0) & 1) << (7 - bit)
            g |= ((value >> 1) & 1) << (7 - bit)
            b |= ((value >> 2) & 1) << (7 - bit)
            value >>= 3
        out[i] = (r, g, b)
    return out


class _Export:
    """Files of an export, from a .zip or a folder, by their '/'-separated names."""

    def __init__(self, source: str) -> None:
        self.source = source
        if os.path.isdir(source):
            self.zip = None
            self.names = sorted(os.path.relpath(os.path.join(d, f), source).replace(os.sep, "/")
                                for d, _, files in os.walk(source) for f in files)
        elif zipfile.is_zipfile(source):
            self.zip = zipfile.ZipFile(source)
            self.names = sorted(n for n in self.zip.namelist() if not n.endswith("/"))
        elif os.path.exists(source):
            raise AnnotationError(f"{source}: not a .zip archive or a folder")
        else:
            raise AnnotationError(f"{source}: no such file or folder")

    def where(self, name: str) -> str:
        return os.path.join(self.source, name) if self.zip is None else f"{self.source}:{name}"

    def read(self, name: str) -> bytes:
        if self.zip is None:
            with open(os.path.join(self.source, name), "rb") as fh:
                return fh.read()
        return self.zip.read(name)

    def path_or_bytes(self, name: str) -> str | bytes:
        return os.path.join(self.source, name) if self.zip is None else self.read(name)


def _labelmap(export: _Export, problems: list[ImportProblem]) -> tuple[list[str], np.ndarray]:
    name = next((n for n in export.names if n.lower() == "labelmap.txt"), None)
    if name is None:
        return list(VOC_LABELS), _voc_colors(len(VOC_LABELS))
    labels, colors = [], []
    text = export.read(name).decode("utf-8", "replace")
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = line.split(":")
        try:
            rgb = [int(v) for v in fields[1].split(",")]
            if len(rgb) != 3 or not all(0 <= v <= 255 for v in rgb) or not fields[0]:
                raise ValueError
        except (IndexError, ValueError):
            problems.append(ImportProblem(export.where(name), None, f"line {lineno}: "
                                          f"{line.strip()!r} is not 'name:R,G,B:parts:actions'; "
                                          f"skipped"))
            continue
        labels.append(fields[0])
        colors.append(rgb)
    if not labels:
        raise AnnotationError(f"{export.where(name)}: no label lines")
    return labels, np.asarray(colors, np.uint8)


def _mask_shapes(data: bytes, file: str, labels: list[str], colors: np.ndarray,
                 problems: list[ImportProblem]) -> tuple[list[Shape], tuple[int, int]]:
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        size = img.size
        if img.mode in ("L", "I;16", "I"):
            index = np.asarray(img).astype(np.int64)
            rgb = None
        else:
            rgb = np.asarray(img.convert("RGB"))
    if rgb is not None:
        packed = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) \
            | rgb[..., 2]
        keys = (colors[:, 0].astype(np.int64) << 16) | (colors[:, 1].astype(np.int64) << 8) \
            | colors[:, 2]
        lut = {int(k): i for i, k in reversed(list(enumerate(keys)))}  # first row wins
        values, inverse = np.unique(packed, return_inverse=True)
        index = np.asarray([lut.get(int(v), -1) for v in values])[inverse.reshape(-1)]
        index = index.reshape(packed.shape)
        unknown = [(int(v), int((packed == v).sum())) for v in values if int(v) not in lut]
        for v, n in unknown:
            rgb = (v >> 16, (v >> 8) & 255, v & 255)
            problems.append(ImportProblem(file, None, f"colour {rgb} ({n} px) is not in "
                                                      f"labelmap.txt; left unlabeled"))
    else:
        bad = (index < 0) | (index >= len(labels))
        if bad.any():
            problems.append(ImportProblem(file, None, f"{int(bad.sum())} px hold values that are "
                                          f"not rows of labelmap.txt; left unlabeled"))
            index = np.where(bad, -1, index)
    shapes = []
    for k in np.unique(index).tolist():
        if k < 0 or labels[k] == _BACKGROUND:
            continue
        shapes.append(Shape(labels[k], file, None,
                            lambda h, w, k=k, index=index: index == k))
    return shapes, size


def _find_image(stem: str, export: _Export, images: str | None) -> str | bytes | None:
    base = os.path.basename(stem)
    if images:
        for rel in (stem, base):
            for ext in IMAGE_EXTENSIONS:
                for cand in (rel + ext, rel + ext.upper()):
                    if os.path.isfile(os.path.join(images, cand)):
                        return os.path.join(images, cand)
    by_stem = {os.path.splitext(n)[0].lower(): n for n in export.names
               if n.lower().startswith(("jpegimages/", "images/"))
               and n.lower().endswith(IMAGE_EXTENSIONS)}
    for prefix in ("jpegimages/", "images/"):
        name = by_stem.get((prefix + stem).lower())
        if name is not None:
            return export.path_or_bytes(name)
    return None


def import_cvat_masks(export: str, out_dir: str, *, images: str | None = None,
                      classes: Sequence[str] | str | None = None, val_fraction: float = 0.0,
                      seed: int = 0,
                      progress: Callable[[int, int], None] | None = None) -> ImportReport:
    """Import a CVAT "Segmentation mask 1.1" export (``export``: the .zip or its
    folder) into ``out_dir`` (images/, annotations/, training.odgt
    [+ validation.odgt], classes.csv); see the module docstring.

    ``images``: the folder of the task's images (matched by relative name without
    extension; default: the archive's JPEGImages/). ``classes``: class names in id
    order or a class table CSV (default: an earlier import's ``out_dir/classes.csv``,
    else labelmap.txt's labels without ``background``). Raises AnnotationError
    when the export has no SegmentationClass masks."""
    source = _Export(export)
    report = ImportReport("cvat", os.path.abspath(out_dir))
    labels, colors = _labelmap(source, report.problems)
    masks = [n for n in source.names if n.lower().startswith("segmentationclass/")
             and n.lower().endswith(".png")]
    if not masks:
        raise AnnotationError(f"{export}: no SegmentationClass/*.png masks (expected CVAT's "
                              f"'Segmentation mask 1.1' export)")
    items = []
    for name in masks:
        stem = os.path.splitext(name.split("/", 1)[1])[0]
        file = source.where(name)
        try:
            shapes, size = _mask_shapes(source.read(name), file, labels, colors, report.problems)
        except (OSError, SyntaxError, ValueError) as exc:
            report.problems.append(ImportProblem(file, None, f"cannot read mask: {exc}; "
                                                             f"left out"))
            continue
        image = _find_image(stem, source, images)
        where = images or "the archive (JPEGImages/)"
        items.append(Item(stem, image, file, size, shapes,
                          "" if image is not None else f"no image {stem}.* in {where}; left out"))
    keep = [k for k, n in enumerate(labels) if n != _BACKGROUND]
    cls = Classes.resolve(classes, out_dir, [labels[k] for k in keep], [],
                          colors[keep] if keep else None)
    return build_dataset(items, out_dir, cls, report, val_fraction, seed, progress)


# ============================================================================ export

def _distinct_colors(colors: np.ndarray) -> np.ndarray:
    """``colors`` with repeated and black entries replaced by unused generated ones."""
    colors = np.asarray(colors, np.uint8).copy()
    used = {(0, 0, 0)}
    spare = iter(generated_palette(len(colors) + 300).tolist())
    for k, c in enumerate(colors.tolist()):
        while tuple(c) in used:
            c = next(spare)
        used.add(tuple(c))
        colors[k] = c
    return colors


class CvatMaskWriter:
    """Collects predictions and writes a CVAT "Segmentation mask 1.1" archive at
    ``path`` (``close``); images are named by ``name``, their path relative to the
    folder uploaded to CVAT, without extension."""

    def __init__(self, path: str, names: Sequence[str], colors: np.ndarray, *,
                 review_below: float | None = None) -> None:
        if _BACKGROUND in names:
            raise ValueError(f"a class named {_BACKGROUND!r} would be read back as unlabeled")
        self.path, self.names = path, list(names)
        self.colors = _distinct_colors(colors)
        bad = [n for n in self.names if ":" in n or "\n" in n]
        if bad:
            raise ValueError(f"class names with ':' cannot go into labelmap.txt: {bad}")
        self.review_below = review_below
        self.ids: list[str] = []
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self.zip = zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED)

    def add(self, name: str, labels: np.ndarray, confidence: np.ndarray | None = None) -> None:
        """Add the class mask of ``labels`` (H x W, 0-based, -1 unlabeled)."""
        palette = np.concatenate([self.colors, np.zeros((1, 3), np.uint8)])
        index = np.where(labels < 0, len(self.colors), labels)
        if confidence is not None and self.review_below is not None:
            for region in regions(labels, confidence, self.review_below):
                if region.review:
                    y0, x0, y1, x1 = region.box
                    index[y0:y1, x0:x1][region.mask] = len(self.colors)
        buf = io.BytesIO()
        Image.fromarray(palette[index]).save(buf, format="PNG", compress_level=1)
        name = name.replace(os.sep, "/")
        self.zip.writestr(f"SegmentationClass/{name}.png", buf.getvalue())
        self.ids.append(name)

    def close(self) -> list[str]:
        """Write the archive; returns [its path]."""
        lines = ["# label:color_rgb:parts:actions", f"{_BACKGROUND}:0,0,0::"]
        lines += [f"{n}:{c[0]},{c[1]},{c[2]}::" for n, c in zip(self.names, self.colors.tolist())]
        with self.zip as zf:
            zf.writestr("labelmap.txt", "\n".join(lines) + "\n")
            zf.writestr("ImageSets/Segmentation/default.txt", "\n".join(self.ids) + "\n")
        return [self.path]
