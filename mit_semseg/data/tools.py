"""Your own dataset, as library functions: folders of images and masks to odgt
lists, and a check of every sample. They take typed arguments, return what
they found (dataclasses) and print nothing; ``python -m mit_semseg datatools``
(:mod:`mit_semseg.commands.datatools`) prints their results::

    python -m mit_semseg datatools odgt --images IMG_DIR --masks MASK_DIR --val-fraction 0.1
    python -m mit_semseg datatools odgt --images IMG_DIR --masks MASK_DIR \\
        --train-list train.txt --val-list val.txt
    python -m mit_semseg datatools check --cfg config/custom.yaml

``plan_odgt`` pairs files by relative folder and stem (after removing the
optional image / mask suffix), reads only the file headers for the sizes, and
splits the pairs; ``write_odgt_lists`` writes ``training.odgt`` /
``validation.odgt`` (paths relative to the root) and a report of every file
left out. The split is a random fraction, separate validation folders, or
split lists (VOC's ``ImageSets/Segmentation/*.txt`` or any file of stems),
whose membership and order are kept exactly. Anything left out (unpaired
files, size mismatches, unreadable headers, two files for one key, listed
samples not found) is listed in the plan.

``check_dataset`` reads every sample of the config's training and validation
lists with the config's label convention (in parallel over the cores) and
returns every problem at once, with the odgt file and line, plus per-class
pixel shares and image counts and the range of image sizes. Class statistics
and weights live in :mod:`mit_semseg.data.stats`.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from PIL import Image
from yacs.config import CfgNode

from ..errors import InputNotFoundError
from .classes import ClassTable, class_table, label_format
from .io import IMAGE_EXTENSIONS, DatasetError, LabelFormat, find_recursive, read_image
# class statistics moved to .stats; the names stay importable from here
from .stats import (CLASS_WEIGHT_RULES, ClassStatistics, Progress, SampleResult,  # noqa: F401
                    class_statistics, class_weights_from_counts, format_weights, map_samples,
                    present_pixels, read_mask, read_odgt_lists)

__all__ = ["PairReport", "pair_folders", "split_pairs", "ListedSplit", "read_split_list",
           "select_listed", "write_odgt", "OdgtOptions", "OdgtPlan", "plan_odgt",
           "OdgtLists", "write_odgt_lists", "CheckReport", "check_lists", "check_dataset"]

# ============================================================================ odgt

@dataclass
class PairReport:
    """Result of pairing one image folder with one mask folder."""

    pairs: list[dict] = field(default_factory=list)  # odgt records (absolute paths)
    keys: list[str] = field(default_factory=list)  # pairs[i]'s key: relative folder + stem
    image_keys: dict[str, str] = field(default_factory=dict)  # key -> image path
    mask_keys: dict[str, str] = field(default_factory=dict)  # key -> mask path
    images_without_mask: list[str] = field(default_factory=list)
    masks_without_image: list[str] = field(default_factory=list)
    size_mismatches: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    not_matching_suffix: list[str] = field(default_factory=list)

    @property
    def errors(self) -> int:
        """Problems that leave a mask or a pair out (images without masks are not)."""
        return (len(self.masks_without_image) + len(self.size_mismatches) + len(self.unreadable)
                + len(self.duplicates))


def _keyed(folder: str, suffix: str, report: PairReport, what: str) -> dict[str, str]:
    """Relative folder + stem (suffix removed) -> path, for every image file under ``folder``."""
    if not os.path.isdir(folder):
        raise InputNotFoundError(f"{what} folder not found: {folder}")
    out: dict[str, str] = {}
    for path in find_recursive(folder, IMAGE_EXTENSIONS):
        rel = os.path.relpath(path, folder)
        stem = os.path.splitext(rel)[0]
        if suffix:
            if not stem.endswith(suffix):
                report.not_matching_suffix.append(path)
                continue
            stem = stem[:-len(suffix)]
        if stem in out:
            report.duplicates.append(f"{path}: same {what} key '{stem}' as {out[stem]}")
            continue
        out[stem] = path
    return out


def _size(path: str) -> tuple[int, int]:
    with Image.open(path) as img:  # header only
        return img.size


def pair_folders(images: str, masks: str, image_suffix: str = "",
                 mask_suffix: str = "") -> PairReport:
    """Pair every image under ``images`` with the mask under ``masks`` that has the
    same relative folder and stem (after removing the suffixes); sizes from the
    file headers. Pairs are sorted by key."""
    report = PairReport()
    imgs = report.image_keys = _keyed(images, image_suffix, report, "image")
    segs = report.mask_keys = _keyed(masks, mask_suffix, report, "mask")
    report.images_without_mask = [imgs[k] for k in sorted(imgs.keys() - segs.keys())]
    report.masks_without_image = [segs[k] for k in sorted(segs.keys() - imgs.keys())]
    for key in sorted(imgs.keys() & segs.keys()):
        img, seg = imgs[key], segs[key]
        try:
            w, h = _size(img)
        except Exception as exc:  # any header PIL cannot read
            report.unreadable.append(f"{img}: cannot read image header ({exc})")
            continue
        try:
            mw, mh = _size(seg)
        except Exception as exc:
            report.unreadable.append(f"{seg}: cannot read mask header ({exc})")
            continue
        if (mw, mh) != (w, h):
            report.size_mismatches.append(f"{seg}: mask {mw}x{mh} but image {img} is {w}x{h}")
            continue
        report.pairs.append({"fpath_img": img, "fpath_segm": seg, "width": w, "height": h})
        report.keys.append(key)
    return report


@dataclass
class ListedSplit:
    """The pairs a split list names, in the list's order, and what it names that is
    not a pair (``not_found``: "line N: entry: why")."""

    pairs: list[dict] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    not_found: list[str] = field(default_factory=list)
    repeated: list[str] = field(default_factory=list)


def read_split_list(path: str) -> list[tuple[int, str]]:
    """``(line number, entry)`` of a split list: one sample per line, its first
    whitespace-separated field (VOC's ``ImageSets/Segmentation/train.txt``, a
    list of stems, file names or paths); blank lines and ``#`` comments skipped."""
    if not os.path.isfile(path):
        raise InputNotFoundError(f"split list not found: {path}")
    out = []
    with open(path, encoding="utf-8-sig") as fh:
        for lineno, line in enumerate(fh, start=1):
            fields = line.split("#", 1)[0].split()
            if fields:
                out.append((lineno, fields[0]))
    return out


def _entry_key(entry: str, suffixes: Sequence[str]) -> str:
    """A list entry as a pairing key: no leading ``./`` or ``/``, no image extension,
    no image or mask suffix (``suffixes``)."""
    key = entry.replace("\\", "/")
    while key.startswith(("./", "/")):
        key = key[2:] if key.startswith("./") else key[1:]
    stem, ext = os.path.splitext(key)
    if ext.lower() in IMAGE_EXTENSIONS:
        key = stem
    for suffix in suffixes:
        if suffix and key.endswith(suffix):
            return key[:-len(suffix)]
    return key


def select_listed(report: PairReport, entries: Sequence[tuple[int, str]],
                  suffixes: Sequence[str] = (), list_name: str = "") -> ListedSplit:
    """The pairs of ``report`` that ``entries`` (``read_split_list``) name, in the
    list's order. An entry (``--image-suffix`` / ``--mask-suffix``, ``suffixes``,
    removed) names the pair whose key (relative folder + stem) it equals, or else the only pair whose stem equals the entry's last part. Entries
    that name no pair are reported with the reason (no such file, image without
    mask, mask without image, left out by the pairing)."""
    out = ListedSplit()
    index = {key: i for i, key in enumerate(report.keys)}
    known = set(report.image_keys) | set(report.mask_keys)
    by_name: dict[str, list[str]] = {}
    for key in known:
        by_name.setdefault(key.rsplit("/", 1)[-1], []).append(key)
    taken: dict[str, int] = {}
    for lineno, entry in entries:
        where = f"{list_name}, line {lineno}: {entry}" if list_name else f"line {lineno}: {entry}"
        key = _entry_key(entry, suffixes)
        if key not in known:
            matches = sorted(by_name.get(key.rsplit("/", 1)[-1], []))
            if len(matches) > 1:
                out.not_found.append(f"{where}: ambiguous, matches {', '.join(matches[:4])}"
                                     f"{' ...' if len(matches) > 4 else ''}; give the folder")
                continue
            key = matches[0] if matches else key
        if key in taken:
            out.repeated.append(f"{where}: repeats line {taken[key]}")
            continue
        taken[key] = lineno
        if key in index:
            out.pairs.append(report.pairs[index[key]])
            out.keys.append(key)
        elif key in report.image_keys and key in report.mask_keys:
            out.not_found.append(f"{where}: left out by the pairing (see the problems above)")
        elif key in report.image_keys:
            out.not_found.append(f"{where}: image {report.image_keys[key]} has no mask")
        elif key in report.mask_keys:
            out.not_found.append(f"{where}: mask {report.mask_keys[key]} has no image")
        else:
            out.not_found.append(f"{where}: no image or mask with this name")
    return out


def split_pairs(pairs: Sequence[dict], fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """(train, val): ``round(fraction * n)`` pairs (at least 1 and at most n-1 when
    0 < fraction and n >= 2) drawn with ``seed`` go to val; both keep input order."""
    n = len(pairs)
    if fraction <= 0 or n < 2:
        return list(pairs), []
    n_val = min(n - 1, max(1, int(round(fraction * n))))
    chosen = set(np.random.default_rng(seed).permutation(n)[:n_val].tolist())
    return ([p for i, p in enumerate(pairs) if i not in chosen],
            [p for i, p in enumerate(pairs) if i in chosen])


def write_odgt(records: Sequence[dict], path: str, root: str) -> None:
    """One JSON line per record, ``fpath_img``/``fpath_segm`` relative to ``root``."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        for rec in records:
            rel = {k: os.path.relpath(rec[k], root).replace(os.sep, "/")
                   for k in ("fpath_img", "fpath_segm")}
            fh.write(json.dumps({**rel, "width": rec["width"], "height": rec["height"]}) + "\n")


def _write_report(path: str, reports: dict[str, PairReport],
                  listed: dict[str, ListedSplit]) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for split, rep in reports.items():
            for title, items in (("images without mask", rep.images_without_mask),
                                 ("masks without image", rep.masks_without_image),
                                 ("size mismatches", rep.size_mismatches),
                                 ("unreadable", rep.unreadable), ("duplicates", rep.duplicates),
                                 ("not matching the suffix", rep.not_matching_suffix)):
                for item in items:
                    fh.write(f"{split}\t{title}\t{item}\n")
        for split, sel in listed.items():
            for title, items in (("listed but not found", sel.not_found),
                                 ("listed twice", sel.repeated)):
                for item in items:
                    fh.write(f"{split}\t{title}\t{item}\n")


@dataclass
class OdgtOptions:
    """What ``plan_odgt`` pairs and how it splits (``datatools odgt``'s flags).

    ``images`` / ``masks``: training folders (searched recursively);
    ``val_images`` / ``val_masks``: validation folders (both or neither);
    ``train_list`` / ``val_list``: split lists naming the samples of each split,
    in order (not with validation folders or ``val_fraction``); else
    ``val_fraction`` (None: 0.1) of the pairs drawn with ``seed`` go to
    validation. ``image_suffix`` / ``mask_suffix``: ends of file stems removed
    before pairing. ``root``: the folder the odgt paths are relative to (None:
    the folders' common parent); ``out``: the folder of the odgt files (None: the
    root); ``train_name`` / ``val_name``: their file names."""

    images: str
    masks: str
    val_images: str | None = None
    val_masks: str | None = None
    train_list: str | None = None
    val_list: str | None = None
    val_fraction: float | None = None
    seed: int = 0
    image_suffix: str = ""
    mask_suffix: str = ""
    root: str | None = None
    out: str | None = None
    train_name: str = "training.odgt"
    val_name: str = "validation.odgt"

    def __post_init__(self) -> None:
        if bool(self.val_images) != bool(self.val_masks):
            raise ValueError("OdgtOptions: give both val_images and val_masks, or neither")
        if (self.train_list or self.val_list) and (self.val_images or
                                                   self.val_fraction is not None):
            raise ValueError("OdgtOptions: train_list / val_list choose the split; leave out "
                             "val_images / val_masks and val_fraction")


@dataclass
class OdgtPlan:
    """What ``plan_odgt`` found and decided, before anything is written."""

    root: str  # the odgt paths are relative to it (absolute)
    out_dir: str  # where the odgt files go (absolute)
    file_names: dict[str, str]  # split -> odgt file name
    reports: dict[str, PairReport]  # split of the folders -> its pairing
    listed: dict[str, ListedSplit]  # split -> what its split list named (lists only)
    lists: dict[str, list[dict]]  # "training" / "validation" -> records to write
    unlisted: list[dict] = field(default_factory=list)  # pairs in neither of two lists
    in_both: list[str] = field(default_factory=list)  # keys in both lists (kept in both)

    @property
    def errors(self) -> int:
        """Problems that leave files out (exit status 1 of the command)."""
        return (sum(rep.errors for rep in self.reports.values())
                + sum(len(sel.not_found) for sel in self.listed.values()))


@dataclass
class OdgtLists:
    """What ``write_odgt_lists`` wrote."""

    written: dict[str, str]  # split -> odgt path (splits with records only)
    counts: dict[str, int]  # split -> records written
    report: str  # the tab-separated list of every file left out


def _split_by_lists(report: PairReport, train_list: str | None, val_list: str | None,
                    suffixes: Sequence[str]
                    ) -> tuple[dict[str, list[dict]], dict[str, ListedSplit], list[dict],
                               list[str]]:
    """Training and validation records as the split lists say: each list's pairs in
    its order; a split without a list gets every pair the other list does not
    name. Also the pairs neither of two lists names, and the keys both name."""
    listed = {split: select_listed(report, read_split_list(path), suffixes, path)
              for split, path in (("training", train_list), ("validation", val_list)) if path}
    lists = {split: sel.pairs for split, sel in listed.items()}
    named = {key for sel in listed.values() for key in sel.keys}
    rest = [p for p, key in zip(report.pairs, report.keys) if key not in named]
    unlisted, in_both = [], []
    if len(listed) == 1:
        lists["validation" if "training" in listed else "training"] = rest
    else:
        unlisted = rest
        in_both = sorted(set(listed["training"].keys) & set(listed["validation"].keys))
    return {s: lists[s] for s in ("training", "validation")}, listed, unlisted, in_both


def plan_odgt(options: OdgtOptions) -> OdgtPlan:
    """Pair the folders of ``options`` and split the pairs; reads file headers only
    and writes nothing. Raises InputNotFoundError for a missing folder or list."""
    o = options
    folders = [o.images, o.masks] + ([o.val_images, o.val_masks] if o.val_images else [])
    folders = [os.path.abspath(f) for f in folders]
    root = os.path.abspath(o.root) if o.root else os.path.commonpath(folders)
    out_dir = os.path.abspath(o.out) if o.out else root
    reports = {"training": pair_folders(folders[0], folders[1], o.image_suffix, o.mask_suffix)}
    if o.val_images:
        reports["validation"] = pair_folders(folders[2], folders[3], o.image_suffix,
                                             o.mask_suffix)
    listed: dict[str, ListedSplit] = {}
    unlisted: list[dict] = []
    in_both: list[str] = []
    if o.val_images:
        lists = {"training": reports["training"].pairs, "validation": reports["validation"].pairs}
    elif o.train_list or o.val_list:
        lists, listed, unlisted, in_both = _split_by_lists(
            reports["training"], o.train_list, o.val_list, (o.image_suffix, o.mask_suffix))
    else:
        fraction = 0.1 if o.val_fraction is None else o.val_fraction
        train, val = split_pairs(reports["training"].pairs, fraction, o.seed)
        lists = {"training": train, "validation": val}
    return OdgtPlan(root, out_dir, {"training": o.train_name, "validation": o.val_name},
                    reports, listed, lists, unlisted, in_both)


def write_odgt_lists(plan: OdgtPlan) -> OdgtLists:
    """Write the plan's non-empty splits as odgt files and ``odgt_report.tsv`` (every
    file left out) into ``plan.out_dir``. Raises DatasetError when there is no
    pair at all (nothing is written then)."""
    written, counts = {}, {}
    for split, records in plan.lists.items():
        if not records:
            continue
        path = os.path.join(plan.out_dir, plan.file_names[split])
        write_odgt(records, path, plan.root)
        written[split], counts[split] = path, len(records)
    if not written:
        raise DatasetError("no image/mask pairs found")
    report_path = os.path.join(plan.out_dir, "odgt_report.tsv")
    _write_report(report_path, plan.reports, plan.listed)
    return OdgtLists(written, counts, report_path)


# ============================================================================ check

def _check_sample(task: tuple[str, str, dict, str, LabelFormat, int]) -> SampleResult:
    split, where, rec, root, fmt, num_class = task
    res = SampleResult(split, where)
    img_path = os.path.join(root, rec["fpath_img"])
    seg_path = os.path.join(root, rec["fpath_segm"])
    img = None
    try:
        img = read_image(img_path)
        res.size = img.size
    except DatasetError as exc:
        res.errors.append(str(exc))
    segm = read_mask(res, seg_path, fmt, num_class)
    if img is not None:
        w, h = rec.get("width"), rec.get("height")
        if (w, h) != img.size:
            res.errors.append(f"{img_path}: odgt says {w}x{h} but the image is "
                              f"{img.size[0]}x{img.size[1]} (width x height)")
    if img is not None and segm is not None and (segm.shape[1], segm.shape[0]) != img.size:
        res.errors.append(f"{seg_path}: annotation size {segm.shape[1]}x{segm.shape[0]} differs "
                          f"from image {img_path} size {img.size[0]}x{img.size[1]}")
    return res


def _line_order(message: str) -> tuple[str, int]:
    """Sort key: the odgt file, then the line number, of a "FILE, line N: ..." message."""
    head, sep, rest = message.partition(", line ")
    number = rest.split(":", 1)[0]
    return (head, int(number)) if sep and number.isdigit() else (message, 0)


def _unlabeled_hint(rgb: tuple[int, int, int], table: ClassTable | None) -> str:
    """What to change so that colour ``rgb`` is read as unlabeled, for ``table``'s layout."""
    r, g, b = rgb
    row = f"'0,unlabeled,{r},{g},{b}'"
    name = table.source if table is not None and table.source else "the class table"
    first_idx = table.first_idx if table is not None else None
    if first_idx == 1:
        add = f"add the row {row} to {name} (Idx 0 = unlabeled; the classes keep Idx 1..N)"
    elif first_idx == 0:
        add = f"number the classes of {name} 1..N and add the row {row} (Idx 0 = unlabeled)"
    else:
        add = (f"add an Idx column to {name} numbering the classes 1..N and the row {row} "
               f"(Idx 0 = unlabeled)")
    return f"if it marks unlabeled pixels, {add}, or set DATASET.ignore_colors [[{r}, {g}, {b}]]"


_COLORS_SHOWN = 8


def _unknown_color_errors(results: Sequence[SampleResult], table: ClassTable | None) -> list[str]:
    """One error per colour missing from the class table (not one per mask),
    most widespread first: how many masks hold it, the first one, and the fix."""
    masks: dict[tuple, list[SampleResult]] = {}
    pixels: dict[tuple, int] = {}
    for res in results:
        for rgb, px in res.unknown_colors or ():
            masks.setdefault(tuple(rgb), []).append(res)
            pixels[tuple(rgb)] = pixels.get(tuple(rgb), 0) + int(px)
    if not masks:
        return []
    total = len(results)
    order = sorted(masks, key=lambda c: (-len(masks[c]), -pixels[c], c))
    errors = []
    for rgb in order[:_COLORS_SHOWN]:
        first = masks[rgb][0]
        errors.append(f"colour {rgb} is not in the class table (DATASET.label_format rgb) and "
                      f"is in {len(masks[rgb])} of {total} masks ({pixels[rgb]} px; first: "
                      f"{first.where}: {first.seg_path}): {_unlabeled_hint(rgb, table)}; "
                      f"otherwise add its class to the table")
    if len(order) > _COLORS_SHOWN:
        rest = order[_COLORS_SHOWN:]
        errors.append(f"{len(rest)} more colours not in the class table, in "
                      f"{len({id(r) for c in rest for r in masks[c]})} masks (e.g. {rest[0]}); "
                      f"masks must be saved losslessly (PNG, not JPEG)")
    return errors


@dataclass
class CheckReport:
    """Everything ``check_lists`` found."""

    num_samples: dict[str, int]
    errors: list[str]
    warnings: list[str]
    pixels: dict[str, np.ndarray]  # split -> pixels per annotation value 0..num_class
    images: dict[str, np.ndarray]  # split -> images containing each value
    width_range: tuple[int, int] | None
    height_range: tuple[int, int] | None
    # split -> labeled pixels of the images containing each value 0..num_class
    present: dict[str, np.ndarray] = field(default_factory=dict)
    names: dict[int, str] = field(default_factory=dict)  # class index -> name
    label_format: str = ""  # DATASET.label_format the masks were read with


def check_lists(lists: dict[str, str], root: str, fmt: LabelFormat, num_class: int,
                names: dict[int, str], workers: int = 0, progress: Progress | None = None,
                table: ClassTable | None = None) -> CheckReport:
    """Check every sample of ``lists`` (split name -> odgt path); ``workers`` processes
    (0: one per core), ``progress(done, total)`` as samples are read. ``table``:
    the class table, named in the hint for colours of colour-coded masks that
    are not in it."""
    entries, errors = read_odgt_lists(lists)
    tasks = [(split, where, rec, root, fmt, num_class) for split, where, rec in entries]
    results = map_samples(_check_sample, tasks, workers, progress)
    splits = list(lists)
    pixels = {s: np.zeros(num_class + 1, np.int64) for s in splits}
    images = {s: np.zeros(num_class + 1, np.int64) for s in splits}
    present = {s: np.zeros(num_class + 1, np.int64) for s in splits}
    sizes = []
    for res in results:
        errors += [f"{res.where}: {e}" for e in res.errors]
        if res.pixels is not None:
            pixels[res.split] += res.pixels
            images[res.split] += res.pixels > 0
            present[res.split] += present_pixels(res.pixels)
        if res.size is not None:
            sizes.append(res.size)
    errors.sort(key=_line_order)
    errors += _unknown_color_errors(results, table)
    warnings = []
    for split in splits:
        if not pixels[split].sum():
            continue
        never = [k for k in range(num_class) if pixels[split][k + 1] == 0]
        if never:
            shown = ", ".join(f"{k} ({names.get(k, f'class_{k}')})" for k in never[:30])
            warnings.append(f"classes never seen in the {split} list ({lists[split]}): {shown}"
                            + (" ..." if len(never) > 30 else ""))
    counts = {s: sum(1 for e in entries if e[0] == s) for s in splits}
    w = (min(s[0] for s in sizes), max(s[0] for s in sizes)) if sizes else None
    h = (min(s[1] for s in sizes), max(s[1] for s in sizes)) if sizes else None
    return CheckReport(counts, errors, warnings, pixels, images, w, h, present, dict(names),
                       fmt.kind)


def check_dataset(cfg: CfgNode, odgt: Sequence[str] | None = None, workers: int = 0,
                  progress: Progress | None = None) -> CheckReport:
    """``check_lists`` of the config's training and validation lists (or of the
    ``odgt`` lists, each named after its file), with its label convention
    (``DATASET.label_format``, ``ignore_label``, ``class_table``). Raises the
    config's errors (an unreadable class table) before reading any sample."""
    fmt = label_format(cfg)
    table = class_table(cfg, strict=True)
    if odgt:
        lists = {os.path.basename(p): p for p in odgt}
    else:
        lists = {"train": cfg.DATASET.list_train, "val": cfg.DATASET.list_val}
    return check_lists(lists, cfg.DATASET.root_dataset, fmt, int(cfg.DATASET.num_class),
                       table.name_dict(), workers, progress=progress, table=table)
