"""Class tables (names and colours) and the label convention of a dataset.

A class table is a CSV file in the style of ``data/object150_info.csv`` with
colour columns added::

    Idx,Name,R,G,B
    1,sky,70,130,180
    2,grass;lawn,107,142,35

* ``Name`` (required): ';'-separated synonyms; the first is the short name shown.
* ``R``, ``G``, ``B`` (optional, all three or none): the class colour, 0..255.
  Without them colours come from :func:`generated_palette`.
* ``Idx`` (optional): row numbers, checked only; rows are the classes in order.
  Classes are numbered either 1..N (ADE20K style; then an extra row with
  ``Idx`` 0 may give the colour of *unlabeled* pixels of colour-coded masks)
  or 0..N-1 (e.g. Cityscapes train ids).
* Other columns (Ratio, Train, ...) are ignored.

Without a table (``DATASET.class_table`` empty): 150 classes get ADE20K's
names and colours; any other count gets ``class_k`` names and a generated
palette whose first 150 colours are ADE20K's.

``label_format(opt)`` turns the ``DATASET`` config node into the
:class:`~mit_semseg.data.io.LabelFormat` that :func:`~mit_semseg.data.io.read_annotation`
uses.
"""
from __future__ import annotations

import colorsys
import csv
import os
import warnings
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from .io import LABEL_FORMATS, DatasetError, LabelFormat

__all__ = ["ClassTable", "ClassTableError", "read_class_table", "resolve_table_path",
           "class_table", "generated_palette", "label_format", "ignore_colors", "write_class_table",
           "ade20k_colors", "ade20k_names", "class_colors", "class_names", "colorEncode", "unique"]


class ClassTableError(DatasetError):
    """The class table file is missing or malformed (the message names the file and row)."""


@dataclass(frozen=True)
class ClassTable:
    """``names[k]`` / ``colors[k]`` describe 0-based class k. ``unlabeled_colors``
    (M x 3) are the colours of unlabeled pixels in colour-coded masks.
    ``first_idx``: how the file's ``Idx`` column numbers the classes (0 or 1;
    None without that column)."""

    names: tuple[str, ...]
    colors: np.ndarray
    unlabeled_colors: np.ndarray
    source: str = ""
    has_colors: bool = True
    first_idx: int | None = None

    @property
    def num_class(self) -> int:
        return len(self.names)

    def name_dict(self) -> dict[int, str]:
        """0-based class index -> short name (the form ``class_names`` returns)."""
        return dict(enumerate(self.names))


# ----------------------------------------------------------------------------- ADE20K and colours

def unique(ar: np.ndarray, return_index: bool = False, return_inverse: bool = False,
           return_counts: bool = False):
    """``np.unique`` (kept for the original's API)."""
    return np.unique(ar, return_index=return_index, return_inverse=return_inverse,
                     return_counts=return_counts)


def colorEncode(labelmap: np.ndarray, colors: np.ndarray, mode: str = "RGB") -> np.ndarray:
    """Colour a class-index map (H x W, 0-based; negative = black) with ``colors`` (K x 3)."""
    labelmap = np.asarray(labelmap).astype(np.int64)
    colors = np.asarray(colors, dtype=np.uint8)
    palette = np.concatenate([colors, np.zeros((1, 3), np.uint8)])  # last row: unlabeled
    index = np.where((labelmap >= 0) & (labelmap < len(colors)), labelmap, len(colors))
    rgb = palette[index]
    return rgb[:, :, ::-1] if mode == "BGR" else rgb


_ADE20K_TABLES = ("color150.mat", "color150.csv", "object150_info.csv")


@lru_cache(maxsize=None)
def _ade20k_file(name: str) -> str:
    """Path of one of the ADE20K tables shipped in ``data/`` (``_ADE20K_TABLES``)."""
    here = os.path.dirname(os.path.abspath(__file__))
    # installed: mit_semseg/data/ade20k/ (setup.py maps the repository's data/ there);
    # a source checkout: <repository>/data/
    repo_data = os.path.join(os.path.dirname(os.path.dirname(here)), "data")
    for folder in (os.path.join(here, "ade20k"), repo_data):
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(f"ADE20K table {name} is missing from the installed package "
                            f"(expected beside {', '.join(_ADE20K_TABLES)}); reinstall mit_semseg")


def ade20k_colors() -> np.ndarray:
    """The 150 ADE20K class colours, 150 x 3 uint8 (works from any directory).

    Read from ``data/color150.csv``, the same colours as the original's
    ``data/color150.mat`` (kept for code that loads it; the tests compare the
    two): reading the .mat needs scipy.io, about 0.25 s of a test.py run."""
    with open(_ade20k_file("color150.csv"), newline="") as fh:
        rows = sorted((int(r["Idx"]), r["R"], r["G"], r["B"]) for r in csv.DictReader(fh))
    if [r[0] for r in rows] != list(range(1, 151)):
        raise ValueError(f"{_ade20k_file('color150.csv')}: expected rows Idx 1..150")
    return np.array([r[1:] for r in rows], dtype=np.uint8)


def ade20k_names() -> dict[int, str]:
    """0-based class index -> short ADE20K name (first of the ';'-separated names)."""
    with open(_ade20k_file("object150_info.csv")) as fh:
        return {int(row["Idx"]) - 1: row["Name"].split(";")[0] for row in csv.DictReader(fh)}


def class_colors(num_class: Any) -> np.ndarray:
    """K x 3 uint8 class colours. ``num_class``: a count, or a config (the whole
    cfg or its DATASET node), whose ``DATASET.class_table`` then decides.
    Without a table: ADE20K's colours, then distinct generated ones beyond 150."""
    if isinstance(num_class, (int, np.integer)):
        return generated_palette(int(num_class))
    return class_table(num_class).colors


def class_names(num_class: Any) -> dict[int, str]:
    """0-based class index -> name. ``num_class``: a count (ADE20K names for 150
    classes, ``class_k`` otherwise), or a config whose ``DATASET.class_table``
    names the classes (see :mod:`mit_semseg.data.classes`)."""
    if isinstance(num_class, (int, np.integer)):
        if int(num_class) == 150:
            return ade20k_names()
        return {k: f"class_{k}" for k in range(int(num_class))}
    return class_table(num_class).name_dict()


# ----------------------------------------------------------------------------- palette

def generated_palette(num_class: int) -> np.ndarray:
    """``num_class`` x 3 uint8 colours: ADE20K's 150 first, then distinct generated
    colours (golden-ratio hues over a few saturation/brightness levels), never
    repeating an earlier colour. Deterministic."""
    base = ade20k_colors()
    if num_class <= len(base):
        return base[:num_class].copy()
    seen = {tuple(c) for c in base.tolist()}
    extra: list[tuple[int, int, int]] = []
    k = 0
    while len(extra) < num_class - len(base):
        hue = (k * 0.618033988749895) % 1.0
        sat = (0.95, 0.65, 0.8, 0.5)[(k // 7) % 4]
        val = (0.95, 0.7, 0.5, 0.85, 0.6)[(k // 3) % 5]
        rgb = tuple(int(round(c * 255)) for c in colorsys.hsv_to_rgb(hue, sat, val))
        k += 1
        if rgb not in seen:
            seen.add(rgb)
            extra.append(rgb)
    return np.concatenate([base, np.asarray(extra, np.uint8)])


# ----------------------------------------------------------------------------- reading

def _column(header: list[str], name: str) -> str | None:
    for h in header:
        if h.strip().lower() == name.lower():
            return h
    return None


def _int_cell(path: str, lineno: int, column: str, text: str, lo: int, hi: int) -> int:
    try:
        value = int(str(text).strip())
    except ValueError:
        raise ClassTableError(f"{path}, line {lineno}: column {column} must be an integer, "
                              f"got {text!r}") from None
    if not lo <= value <= hi:
        raise ClassTableError(f"{path}, line {lineno}: column {column} must be in {lo}..{hi}, "
                              f"got {value}")
    return value


def read_class_table(path: str, num_class: int | None = None) -> ClassTable:
    """Read a class table CSV (see the module docstring). With ``num_class`` the
    number of class rows must equal it. Errors name the file and line."""
    if not os.path.isfile(path):
        raise ClassTableError(f"{path}: class table not found")
    with open(path, newline="", encoding="utf-8-sig") as fh:
        rows = list(csv.reader(fh))
    rows = [(i + 1, r) for i, r in enumerate(rows) if any(cell.strip() for cell in r)]
    if not rows:
        raise ClassTableError(f"{path}: class table is empty (expected a header such as "
                              f"Idx,Name,R,G,B and one row per class)")
    header = rows[0][1]
    name_col = _column(header, "Name")
    if name_col is None:
        raise ClassTableError(f"{path}, line {rows[0][0]}: no 'Name' column in the header "
                              f"{header} (expected e.g. Idx,Name,R,G,B)")
    rgb_cols = [_column(header, c) for c in "RGB"]
    if any(rgb_cols) and not all(rgb_cols):
        raise ClassTableError(f"{path}: colour columns must be all of R, G, B or none; "
                              f"header is {header}")
    idx_col = _column(header, "Idx")
    records = []
    for lineno, cells in rows[1:]:
        rec = dict(zip(header, cells))
        name = (rec.get(name_col) or "").split(";")[0].strip()
        if not name:
            raise ClassTableError(f"{path}, line {lineno}: empty Name")
        idx = _int_cell(path, lineno, "Idx", rec.get(idx_col, ""), 0, 2**31) if idx_col else None
        color = tuple(_int_cell(path, lineno, c, rec.get(col, ""), 0, 255)
                      for c, col in zip("RGB", rgb_cols)) if all(rgb_cols) else None
        records.append((lineno, idx, name, color))
    if not records:
        raise ClassTableError(f"{path}: no class rows below the header")

    unlabeled = []
    first_idx = None
    if idx_col:
        numbers = [idx for _, idx, _, _ in records]
        ones = [r for r in records if r[1] != 0]
        one_based = [r[1] for r in ones] == list(range(1, len(ones) + 1))
        zero_based = numbers == list(range(len(records)))
        # 0..N-1 versus "Idx 0 = unlabeled, then 1..N": num_class decides; alone, 0..N-1.
        if one_based and len(ones) < len(records) and (num_class == len(ones) or not zero_based):
            unlabeled = [r for r in records if r[1] == 0]
            records = ones
        elif not zero_based and not one_based:
            raise ClassTableError(
                f"{path}: Idx must number the rows 1..N (optionally with Idx 0 rows for "
                f"unlabeled pixels) or 0..N-1 in order; got {numbers[:12]}"
                f"{' ...' if len(numbers) > 12 else ''}")
        first_idx = records[0][1]
    if num_class is not None and len(records) != num_class:
        raise ClassTableError(f"{path}: {len(records)} classes in the table but "
                              f"DATASET.num_class is {num_class}")
    has_colors = all(rgb_cols)
    if has_colors:
        colors = np.asarray([r[3] for r in records], np.uint8)
    else:
        colors = generated_palette(len(records))
    unl = np.asarray([r[3] for r in unlabeled if r[3] is not None], np.uint8).reshape(-1, 3)
    return ClassTable(tuple(r[2] for r in records), colors, unl, path, has_colors, first_idx)


def write_class_table(path: str, names: Any, colors: Any) -> None:
    """Write ``Idx,Name,R,G,B`` rows (Idx 1..N) for ``names`` / ``colors`` (N x 3)."""
    colors = np.asarray(colors, np.uint8).reshape(-1, 3)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        out = csv.writer(fh)
        out.writerow(["Idx", "Name", "R", "G", "B"])
        for k, (name, color) in enumerate(zip(names, colors.tolist()), start=1):
            out.writerow([k, name, *color])


# ----------------------------------------------------------------------------- config

def resolve_table_path(table: str, root_dataset: str = "") -> str:
    """``table`` as given if it exists (absolute, or relative to the current
    folder), else under ``root_dataset``; raises ClassTableError naming both."""
    if os.path.isabs(table) or os.path.isfile(table) or not root_dataset:
        if not os.path.isfile(table):
            raise ClassTableError(f"{table}: class table not found (DATASET.class_table)")
        return table
    under_root = os.path.join(root_dataset, table)
    if os.path.isfile(under_root):
        return under_root
    raise ClassTableError(f"class table not found: {table} (DATASET.class_table), looked in the "
                          f"current folder and in DATASET.root_dataset ({under_root})")


def _dataset_node(opt: Any) -> Any:
    return opt.DATASET if hasattr(opt, "DATASET") else opt


@lru_cache(maxsize=32)
def _cached_table(path: str, mtime: float, num_class: int) -> ClassTable:
    return read_class_table(path, num_class)


def class_table(opt: Any, strict: bool = False) -> ClassTable:
    """The class table a config uses (``opt``: the whole cfg or its DATASET node):
    ``DATASET.class_table`` if set, else ADE20K's for 150 classes, else
    ``class_k`` names and :func:`generated_palette` colours.

    A table file that is set but cannot be found raises ``ClassTableError`` when
    ``strict`` (reading masks, checking data); for showing results (eval,
    test.py, Segmenter, e.g. with a model but without its dataset folder) it
    warns once and the defaults are used. A malformed table always raises.
    """
    ds = _dataset_node(opt)
    num_class = int(ds.num_class)
    table = str(getattr(ds, "class_table", "") or "")
    if table:
        try:
            path = resolve_table_path(table, str(getattr(ds, "root_dataset", "") or ""))
        except ClassTableError as exc:
            if strict:
                raise
            _warn_missing(str(exc))
        else:
            return _cached_table(os.path.abspath(path), os.path.getmtime(path), num_class)
    empty = np.zeros((0, 3), np.uint8)
    if num_class == 150:
        names = ade20k_names()
        return ClassTable(tuple(names[k] for k in range(150)), ade20k_colors(), empty, "ADE20K")
    return ClassTable(tuple(f"class_{k}" for k in range(num_class)), generated_palette(num_class),
                      empty, "", has_colors=False)


_warned: set[str] = set()


def _warn_missing(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        warnings.warn(f"{message}; showing default class names and colours", stacklevel=3)


def label_format(opt: Any) -> LabelFormat:
    """The annotation convention of ``opt`` (cfg or DATASET node); missing keys
    mean ADE20K's convention. ``rgb`` needs a class table with colours."""
    ds = _dataset_node(opt)
    kind = str(getattr(ds, "label_format", "ade20k") or "ade20k").lower()
    if kind not in LABEL_FORMATS:
        raise DatasetError(f"DATASET.label_format '{kind}' is not one of {list(LABEL_FORMATS)}")
    num_class = getattr(ds, "num_class", None)
    ignore = int(getattr(ds, "ignore_label", 255))
    if kind == "zero_based" and num_class is not None and 0 <= ignore < int(num_class):
        raise DatasetError(f"DATASET.ignore_label {ignore} is a class value "
                           f"(0..{int(num_class) - 1}"
                           f" with num_class={num_class}); use a value >= num_class, e.g. 255")
    if kind != "rgb":
        return LabelFormat(kind, None if num_class is None else int(num_class), ignore)
    if not getattr(ds, "class_table", ""):
        raise DatasetError("DATASET.label_format 'rgb' needs DATASET.class_table: a CSV with "
                           "Name,R,G,B columns giving each class's colour in the masks")
    table = class_table(ds, strict=True)
    if not table.has_colors:
        raise DatasetError(f"{table.source}: DATASET.label_format 'rgb' needs R,G,B columns "
                           f"in the class table")
    unlabeled = np.concatenate([table.unlabeled_colors, ignore_colors(ds)])
    return LabelFormat(kind, table.num_class, ignore, table.colors, unlabeled)


def ignore_colors(opt: Any) -> np.ndarray:
    """``DATASET.ignore_colors`` (cfg or DATASET node) as an M x 3 uint8 array:
    colours read as unlabeled in colour-coded masks, besides the class table's
    ``Idx 0`` rows. One colour ``[R, G, B]`` or a list of them."""
    value = getattr(_dataset_node(opt), "ignore_colors", ()) or ()
    rows = [value] if len(value) == 3 and all(isinstance(v, int) for v in value) else value
    out = []
    for row in rows:
        if (not isinstance(row, (list, tuple)) or len(row) != 3
                or not all(isinstance(v, int) and 0 <= v <= 255 for v in row)):
            raise DatasetError(f"DATASET.ignore_colors must be a list of [R, G, B] colours with "
                               f"values 0..255, e.g. [[0, 0, 0]]; got {list(value)}")
        out.append(row)
    return np.asarray(out, np.uint8).reshape(-1, 3)
