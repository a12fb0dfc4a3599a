"""What the importers and exporters share: the report, class resolution, the
dataset writer (images, masks, odgt lists, class table), polygon rasterisation,
regions of a label map, and the optional libraries."""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageOps

from ...errors import MitSemsegError
from ..classes import generated_palette, read_class_table, write_class_table
from ..io import DatasetError
from ..labelmap import write_label_map

__all__ = ["AnnotationError", "ImportProblem", "ImportReport", "IGNORE_LABEL"]

# LabelMe's (labelme2voc) name for pixels that are not labeled; the importers
# paint it as unlabeled and the LabelMe writer uses it for unlabeled holes.
IGNORE_LABEL = "__ignore__"


class AnnotationError(MitSemsegError, ValueError):
    """An annotation export cannot be read at all (the message names the file)."""


_PACKAGES = {"cv2": "OpenCV (opencv-python-headless)", "pycocotools": "pycocotools"}


def read_json(path: str) -> Any:
    """The JSON document in ``path``; AnnotationError naming the file when it is
    missing or not JSON."""
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError:
        raise AnnotationError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AnnotationError(f"{path}: cannot read JSON: {exc}") from None


def require(module: str, extra: str, what: str) -> Any:
    """Import an optional library or raise AnnotationError naming the extra."""
    import importlib
    try:
        return importlib.import_module(module)
    except ImportError:
        top = module.split(".")[0]
        raise AnnotationError(f"{what} needs {_PACKAGES.get(top, top)}: "
                              f'pip install -e ".[{extra}]"') from None


# ============================================================================ report

@dataclass(frozen=True)
class ImportProblem:
    """A shape, annotation or image that was not imported (or imported only in
    part), with the file it came from and its 0-based position there (``index``:
    None when the whole file or image is meant)."""

    file: str
    index: int | None
    message: str

    def __str__(self) -> str:
        where = self.file if self.index is None else f"{self.file}, shape {self.index}"
        return f"{where}: {self.message}"


@dataclass
class ImportReport:
    """What an import wrote and everything it left out.

    ``samples``: odgt records written by this import (absolute paths);
    ``shapes``: shapes painted; ``problems``: every skipped or malformed shape,
    unknown class and skipped image; ``notes``: changes made on purpose (EXIF
    rotation applied, images re-encoded); ``config_opts``: the overrides to
    train on the result (``KEY VALUE`` pairs)."""

    format: str
    out_dir: str
    class_names: tuple[str, ...] = ()
    class_table: str = ""
    train_list: str = ""
    val_list: str = ""
    samples: list[dict] = field(default_factory=list)
    shapes: int = 0
    problems: list[ImportProblem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when nothing was skipped."""
        return not self.problems

    @property
    def config_opts(self) -> list[str]:
        opts = ["DATASET.root_dataset", self.out_dir, "DATASET.list_train", self.train_list,
                "DATASET.num_class", str(len(self.class_names)),
                "DATASET.class_table", self.class_table, "DATASET.label_format", "ade20k"]
        if self.val_list:
            opts[4:4] = ["DATASET.list_val", self.val_list]
        return opts

    def summary(self) -> str:
        """A few lines for a command to print: counts, then every problem."""
        lines = [f"imported {len(self.samples)} image(s), {self.shapes} shape(s), "
                 f"{len(self.class_names)} class(es) from {self.format} into {self.out_dir}"]
        lines += [f"note: {n}" for n in self.notes]
        lines += [f"problem: {p}" for p in self.problems]
        lines.append(f"{len(self.problems)} problem(s)")
        return "\n".join(lines)


# ============================================================================ classes

class Classes:
    """Class names -> 0-based ids. ``fixed``: names given by the user (a list or
    a class table CSV), so that ids stay the same across imports; otherwise the
    format's own list (COCO categories, the CVAT labelmap) or, failing that, the
    sorted names found."""

    def __init__(self, names: Sequence[str], colors: np.ndarray | None = None) -> None:
        self.names = tuple(names)
        odd = [n for n in self.names if ";" in n or not n.strip()]
        if odd:
            raise AnnotationError(f"class names {odd} cannot go into a class table (';' "
                                  f"separates synonyms there, and names must not be empty)")
        if len(set(self.names)) != len(self.names):
            dup = sorted({n for n in self.names if self.names.count(n) > 1})
            raise AnnotationError(f"class names given twice: {dup}")
        self.ids = {n: k for k, n in enumerate(self.names)}
        self.colors = (np.asarray(colors, np.uint8).reshape(-1, 3) if colors is not None
                       else generated_palette(len(self.names)))

    @classmethod
    def resolve(cls, given: Sequence[str] | str | None, out_dir: str,
                format_names: Sequence[str] | None, found: Iterable[str],
                format_colors: np.ndarray | None = None) -> "Classes":
        """The classes of an import (see the class docstring); ``out_dir``'s
        ``classes.csv`` from an earlier import counts as given."""
        if isinstance(given, str):
            table = read_class_table(given)
            return cls(table.names, table.colors if table.has_colors else None)
        if given is not None:
            return cls([str(n) for n in given])
        earlier = os.path.join(out_dir, "classes.csv")
        if os.path.isfile(earlier):
            table = read_class_table(earlier)
            return cls(table.names, table.colors if table.has_colors else None)
        if format_names is not None:
            return cls(format_names, format_colors)
        return cls(sorted({n for n in found if n != IGNORE_LABEL}))


# ============================================================================ images

def _link_or_copy(src: str, dst: str) -> None:
    os.makedirs(os.path.dirname(dst) or ".", exist_ok=True)
    if os.path.exists(dst):
        if os.path.samefile(src, dst):
            return
        os.remove(dst)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def _orientation(img: Image.Image) -> int:
    try:
        return int(img.getexif().get(0x0112, 1) or 1)
    except Exception:  # malformed EXIF: the stored layout counts
        return 1


@dataclass
class ImageInfo:
    """An image to import: ``size`` (width, height) of the pixels training will read
    and whether they are the stored pixels turned by the photo's EXIF orientation."""

    src: str | bytes
    size: tuple[int, int]
    rotate: bool
    format: str


def inspect_image(src: str | bytes, declared: tuple[int, int] | None,
                  oriented_first: bool) -> ImageInfo:
    """Read the header of ``src`` (a path or the file's bytes).

    Training reads the stored pixels (no EXIF rotation). A photo whose EXIF says
    to turn it is imported turned when the annotation was made on the turned
    view: its declared size is the turned one (or, for a square photo or no
    declared size, ``oriented_first``: LabelMe, CVAT and Label Studio show
    turned photos, COCO files use the stored pixels)."""
    import io as _io
    name = src if isinstance(src, str) else "embedded image"
    try:
        with Image.open(src if isinstance(src, str) else _io.BytesIO(src)) as img:
            stored, orientation, fmt = img.size, _orientation(img), img.format or "PNG"
    except (OSError, SyntaxError, ValueError) as exc:
        raise DatasetError(f"{name}: cannot read image: {exc}") from None
    if orientation == 1:
        return ImageInfo(src, stored, False, fmt)
    turned = stored[::-1] if orientation in (5, 6, 7, 8) else stored
    rotate = (declared == turned and declared != stored) or \
        (declared in (None, turned) and oriented_first)
    return ImageInfo(src, turned if rotate else stored, rotate, fmt)


def write_image(info: ImageInfo, dst_stem: str, notes: list[str]) -> str:
    """Put the image at ``dst_stem`` + its extension (a hard link or a copy of the
    file; turned ones are re-encoded as PNG, noted); returns the path."""
    import io as _io
    if info.rotate:
        path = dst_stem + ".png"
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with Image.open(info.src if isinstance(info.src, str) else _io.BytesIO(info.src)) as img:
            ImageOps.exif_transpose(img).save(path)
        name = info.src if isinstance(info.src, str) else "embedded image"
        notes.append(f"{name}: EXIF orientation applied (the annotation was made on the "
                     f"turned photo); written as {path}")
        return path
    if isinstance(info.src, str):
        path = dst_stem + os.path.splitext(info.src)[1].lower()
        _link_or_copy(info.src, path)
        return path
    path = dst_stem + "." + info.format.lower().replace("jpeg", "jpg")
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(info.src)
    return path


# ============================================================================ painting

class Malformed(Exception):
    """A shape that cannot be rasterised; the message says why."""


@dataclass
class Shape:
    """One annotated region: its class name, where it comes from (file and 0-based
    index there), and ``mask(height, width)``: a bool mask, or raises Malformed."""

    label: str
    file: str
    index: int | None
    mask: Callable[[int, int], np.ndarray]


@dataclass
class Item:
    """One image to import: its output key (relative path without extension), its
    image (a path or the file's bytes; None: not found, ``missing`` says why),
    the annotation file, the size the annotation declares (width, height) if any,
    and its shapes in painting order (later on top)."""

    key: str
    image: str | bytes | None
    file: str
    declared: tuple[int, int] | None
    shapes: list[Shape]
    missing: str = ""
    oriented_first: bool = True


def polygon_mask(points: Sequence[Sequence[float]], height: int, width: int, *,
                 outline: bool, shift: float = 0.0) -> np.ndarray:
    """Rasterise a polygon with PIL. ``outline``: LabelMe's rule (pixels whose
    centres are inside, plus the pixels the edges pass through; vertices are pixel
    centres). Without it: pixels whose centres are inside, for continuous
    coordinates where pixel k spans [k, k+1) (``shift`` -0.5 moves them to PIL's
    centre-based grid)."""
    xy = [(float(x) + shift, float(y) + shift) for x, y in points]
    img = Image.new("1", (width, height), 0)
    ImageDraw.Draw(img).polygon(xy, fill=1, outline=1 if outline else None)
    return np.asarray(img, dtype=bool)


def parse_points(raw: Any, minimum: int, what: str = "points") -> list[tuple[float, float]]:
    """``[[x, y], ...]`` as floats, at least ``minimum`` of them, else Malformed."""
    if not isinstance(raw, (list, tuple)):
        raise Malformed(f"{what} is not a list")
    out = []
    for p in raw:
        if not isinstance(p, (list, tuple)) or len(p) != 2:
            raise Malformed(f"{what} must be [x, y] pairs, got {p!r}")
        try:
            x, y = float(p[0]), float(p[1])
        except (TypeError, ValueError):
            raise Malformed(f"{what} must be numbers, got {p!r}") from None
        if not (np.isfinite(x) and np.isfinite(y)):
            raise Malformed(f"{what} must be finite, got {p!r}")
        out.append((x, y))
    if len(out) < minimum:
        raise Malformed(f"{len(out)} point(s); needs at least {minimum}")
    return out


def build_dataset(items: Sequence[Item], out_dir: str, classes: Classes, report: ImportReport,
                  val_fraction: float, seed: int,
                  progress: Callable[[int, int], None] | None = None) -> ImportReport:
    """Paint every item's shapes (file order, later on top), write images, masks,
    odgt lists and the class table into ``out_dir``; fill ``report``."""
    from ..tools import split_pairs, write_odgt
    out_dir = os.path.abspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    records = []
    for n, item in enumerate(items):
        record = _import_item(item, out_dir, classes, report)
        if record is not None:
            records.append(record)
        if progress is not None:
            progress(n + 1, len(items))
    report.class_names = classes.names
    report.class_table = os.path.join(out_dir, "classes.csv")
    write_class_table(report.class_table, classes.names, classes.colors)
    train, val = split_pairs(records, val_fraction, seed)
    report.train_list = os.path.join(out_dir, "training.odgt")
    lists = {"training": train}
    if val or os.path.isfile(os.path.join(out_dir, "validation.odgt")):
        report.val_list = os.path.join(out_dir, "validation.odgt")
        lists["validation"] = val
    written = {os.path.abspath(r["fpath_segm"]) for r in records}
    for name, new in lists.items():
        path = os.path.join(out_dir, f"{name}.odgt")
        kept = [r for r in _read_earlier(path, out_dir) if r["fpath_segm"] not in written]
        write_odgt(kept + new, path, out_dir)
    report.samples = records
    return report


def _read_earlier(path: str, root: str) -> list[dict]:
    """Records of an odgt list an earlier import wrote (absolute paths)."""
    import json
    if not os.path.isfile(path):
        return []
    out = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                rec = json.loads(line)
                for k in ("fpath_img", "fpath_segm"):
                    rec[k] = os.path.abspath(os.path.join(root, rec[k]))
                out.append(rec)
    return out


def _import_item(item: Item, out_dir: str, classes: Classes,
                 report: ImportReport) -> dict | None:
    problems = report.problems
    if item.image is None:
        problems.append(ImportProblem(item.file, None, item.missing or "image not found; "
                                      "left out"))
        return None
    if not item.shapes:
        problems.append(ImportProblem(item.file, None, "no shapes; image left out"))
        return None
    key = item.key.replace("\\", "/")
    try:
        info = inspect_image(item.image, item.declared, item.oriented_first)
    except DatasetError as exc:
        problems.append(ImportProblem(item.file, None, f"{exc}; left out"))
        return None
    width, height = info.size
    if item.declared is not None and tuple(item.declared) != (width, height):
        name = item.image if isinstance(item.image, str) else "its embedded image"
        problems.append(ImportProblem(
            item.file, None, f"the annotation is for a {item.declared[0]}x{item.declared[1]} "
                             f"image but {name} is {width}x{height}; left out"))
        return None
    labels = np.full((height, width), -1, np.int32)
    painted = 0
    for shape in item.shapes:
        if shape.label == IGNORE_LABEL:
            k = -1
        elif shape.label in classes.ids:
            k = classes.ids[shape.label]
        else:
            problems.append(ImportProblem(shape.file, shape.index,
                                          f"unknown class {shape.label!r} (classes: "
                                          f"{_shown(classes.names)}); skipped"))
            continue
        try:
            mask = shape.mask(height, width)
        except Malformed as exc:
            problems.append(ImportProblem(shape.file, shape.index,
                                          f"malformed {shape.label!r} shape: {exc}; skipped"))
            continue
        if not mask.any():
            problems.append(ImportProblem(shape.file, shape.index,
                                          f"{shape.label!r} shape covers no pixel of the "
                                          f"{width}x{height} image; skipped"))
            continue
        labels[mask] = k
        painted += 1
    if not painted:
        problems.append(ImportProblem(item.file, None, "no shape could be painted; image "
                                      "left out"))
        return None
    report.shapes += painted
    img_path = write_image(info, os.path.join(out_dir, "images", key), report.notes)
    seg_path = os.path.join(out_dir, "annotations", key + ".png")
    write_label_map(seg_path, labels, len(classes.names), classes.colors)
    return {"fpath_img": img_path, "fpath_segm": os.path.abspath(seg_path),
            "width": width, "height": height}


def _shown(names: Sequence[str], limit: int = 12) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def unique_keys(paths: Sequence[str]) -> list[str]:
    """Output keys (relative path without extension) for relative image paths;
    two images with the same stem keep their extension in the key."""
    stems = [os.path.splitext(p)[0] for p in paths]
    seen: dict[str, int] = {}
    for s in stems:
        seen[s.lower()] = seen.get(s.lower(), 0) + 1
    return [p.replace(".", "_") if seen[s.lower()] > 1 else s for p, s in zip(paths, stems)]


# ============================================================================ regions out

@dataclass
class Region:
    """A 4-connected region of one class in a label map: ``class_id`` (0-based,
    -1 unlabeled), its bounding box ``(y0, x0, y1, x1)`` (end exclusive), ``mask``
    (bool, the box's size), pixel count and mean confidence (None without a
    confidence map); ``review``: below the confidence threshold."""

    class_id: int
    box: tuple[int, int, int, int]
    mask: np.ndarray
    pixels: int
    confidence: float | None = None
    review: bool = False

    def full_mask(self, height: int, width: int) -> np.ndarray:
        out = np.zeros((height, width), bool)
        y0, x0, y1, x1 = self.box
        out[y0:y1, x0:x1] = self.mask
        return out


def regions(labels: np.ndarray, confidence: np.ndarray | None = None,
            review_below: float | None = None, include_unlabeled: bool = False) -> list[Region]:
    """The 4-connected regions of each class of ``labels`` (0-based, -1 unlabeled),
    in class order then scan order. With ``confidence`` each gets its mean and,
    below ``review_below``, ``review``."""
    from scipy import ndimage
    labels = np.asarray(labels)
    out = []
    for k in np.unique(labels).tolist():
        if k < 0 and not include_unlabeled:
            continue
        comp, n = ndimage.label(labels == k)
        boxes = ndimage.find_objects(comp)
        for j, box in enumerate(boxes, start=1):
            mask = comp[box] == j
            conf = None
            if confidence is not None:
                conf = float(np.asarray(confidence)[box][mask].mean(dtype=np.float64))
            review = conf is not None and review_below is not None and conf < review_below
            out.append(Region(int(k), (box[0].start, box[1].start, box[0].stop, box[1].stop),
                              mask, int(mask.sum()), conf, review))
    return out


def hex_color(color: Sequence[int]) -> str:
    r, g, b = (int(c) for c in color)
    return f"#{r:02x}{g:02x}{b:02x}"
