"""Annotations in and out: the tools people label with, and the toolkit's
training layout.

Importers (one module per format) turn an export into the layout the toolkit
trains on, in ``out_dir``::

    images/<key>.<ext>        the images (hard links, or copies)
    annotations/<key>.png     masks, ADE20K convention (0 = unlabeled, k = class k),
                              8-bit indexed with the class colours (16-bit above 255)
    training.odgt  [validation.odgt]
    classes.csv               Idx,Name,R,G,B (Idx 1..N), the class names kept

Shapes are painted in their file's order, later on top; every shape, annotation
or image left out is in the returned ``ImportReport`` with its file and index.
Importing again into the same ``out_dir`` keeps its class ids (its classes.csv)
and the samples of earlier imports, replacing those imported again.

Writers (``LabelMeWriter``, ``CocoWriter``, ``LabelStudioWriter``,
``CvatMaskWriter``) turn label maps into each format, for pre-labelling
(``python -m mit_semseg prelabel``). Optional libraries: pycocotools for COCO
(``[coco]``), OpenCV for LabelMe polygons (``[polygons]``).
"""
from __future__ import annotations

import json
import os
import zipfile
from typing import Callable, Sequence

from ._common import (IGNORE_LABEL, AnnotationError, ImportProblem, ImportReport, Region, regions,
                      require, unique_keys)
from .coco import CocoWriter, import_coco
from .cvat import CvatMaskWriter, import_cvat_masks
from .labelme import DEFAULT_TOLERANCE, LabelMeWriter, import_labelme
from .labelstudio import LabelStudioWriter, import_label_studio

__all__ = ["import_annotations", "detect_format", "IMPORT_FORMATS", "ImportReport",
           "ImportProblem", "AnnotationError", "IGNORE_LABEL", "import_labelme", "import_coco",
           "import_cvat_masks", "import_label_studio", "LabelMeWriter", "CocoWriter",
           "LabelStudioWriter", "CvatMaskWriter", "DEFAULT_TOLERANCE", "Region", "regions",
           "unique_keys", "require_extras"]

IMPORT_FORMATS = ("labelme", "coco", "cvat", "label-studio")


def require_extras(formats: Sequence[str]) -> None:
    """Raise AnnotationError (naming the extra to install) when a writer of
    ``formats`` needs a library that is missing: "coco" pycocotools, "labelme"
    OpenCV."""
    if "coco" in formats:
        require("pycocotools.mask", "coco", "COCO export")
    if "labelme" in formats:
        require("cv2", "polygons", "LabelMe polygons")


def detect_format(source: str) -> str:
    """The format of an export: a folder of LabelMe JSON files, a CVAT archive or
    folder (SegmentationClass/), a COCO JSON file (images/annotations/categories)
    or a Label Studio JSON export (a list of tasks). Raises AnnotationError."""
    if os.path.isdir(source):
        if os.path.isdir(os.path.join(source, "SegmentationClass")):
            return "cvat"
        return "labelme"
    if not os.path.isfile(source):
        raise AnnotationError(f"{source}: no such file or folder")
    if zipfile.is_zipfile(source):
        return "cvat"
    try:
        with open(source, encoding="utf-8") as fh:
            doc = json.load(fh)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AnnotationError(f"{source}: neither a folder, a .zip nor JSON: {exc}") from None
    if isinstance(doc, dict) and "shapes" in doc:
        return "labelme"
    if isinstance(doc, dict) and "annotations" in doc and "categories" in doc:
        return "coco"
    if isinstance(doc, list) or (isinstance(doc, dict) and "data" in doc):
        return "label-studio"
    raise AnnotationError(f"{source}: cannot tell its format; give one of {list(IMPORT_FORMATS)}")


def import_annotations(source: str, out_dir: str, fmt: str = "auto", *,
                       images: str | None = None, classes: Sequence[str] | str | None = None,
                       val_fraction: float = 0.0, seed: int = 0, crowd: str = "class",
                       use_predictions: bool = False,
                       progress: Callable[[int, int], None] | None = None) -> ImportReport:
    """Import an annotation export into the training layout in ``out_dir``.

    ``source``: a LabelMe folder (or one JSON file), a COCO JSON file, a CVAT
    "Segmentation mask 1.1" .zip (or its folder) or a Label Studio JSON export.
    ``fmt``: one of ``IMPORT_FORMATS``, or "auto" (``detect_format``).
    ``images``: where the images are when the export does not hold them.
    ``classes``: class names in id order, or a class table CSV, to keep ids
    stable across imports (default: ``out_dir/classes.csv`` of an earlier import,
    else the format's list or the sorted names found). ``val_fraction`` of the
    imported images (drawn with ``seed``) go to validation.odgt. ``crowd``
    (COCO): "class" or "unlabeled". ``use_predictions`` (Label Studio): tasks
    without annotations use their prediction. ``progress(done, total)`` is called
    per image.

    Returns an ``ImportReport`` (no printing); raises AnnotationError when the
    export cannot be read at all. ``python -m mit_semseg datatools check`` passes
    on the result with ``report.config_opts``."""
    fmt = detect_format(source) if fmt == "auto" else fmt
    common = dict(images=images, classes=classes, val_fraction=val_fraction, seed=seed,
                  progress=progress)
    if fmt == "labelme":
        return import_labelme(source, out_dir, **common)
    if fmt == "coco":
        return import_coco(source, out_dir, crowd=crowd, **common)
    if fmt == "cvat":
        return import_cvat_masks(source, out_dir, **common)
    if fmt == "label-studio":
        return import_label_studio(source, out_dir, use_predictions=use_predictions, **common)
    raise AnnotationError(f"unknown annotation format {fmt!r}; expected one of "
                          f"{list(IMPORT_FORMATS)} or 'auto'")
