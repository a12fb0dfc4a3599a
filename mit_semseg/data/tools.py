"""Your own dataset: folders of images and masks to odgt lists, and a check of
every sample. Command line::

    python -m mit_semseg datatools odgt --images IMG_DIR --masks MASK_DIR --val-fraction 0.1
    python -m mit_semseg datatools odgt --images IMG_DIR --masks MASK_DIR \\
        --train-list train.txt --val-list val.txt
    python -m mit_semseg datatools check --cfg config/custom.yaml

``odgt`` pairs files by relative folder and stem (after removing the optional
``--image-suffix`` / ``--mask-suffix``), reads only the file headers for the
sizes, and writes ``training.odgt`` / ``validation.odgt`` (paths relative to
``--root``). The split is a random ``--val-fraction``, separate validation
folders, or split lists (``--train-list`` / ``--val-list``: VOC's
``ImageSets/Segmentation/*.txt`` or any file of stems), whose membership and
order are kept exactly. Anything it leaves out (unpaired files, size
mismatches, unreadable headers, two files for one key, listed samples not
found) is listed.

``check`` reads every sample of the config's training and validation lists
with the config's label convention (in parallel over the cores) and reports
every problem at once, with the odgt file and line, plus per-class pixel
shares and image counts and the range of image sizes. Exit status 1 when
there are errors.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
from PIL import Image

from ..errors import InputNotFoundError
from .classes import ClassTable, class_table, label_format
from .datasets import read_odgt_lines
from .io import (IMAGE_EXTENSIONS, DatasetError, LabelFormat, UnknownColorsError, find_recursive,
                 read_annotation, read_image)

__all__ = ["PairReport", "pair_folders", "split_pairs", "ListedSplit", "read_split_list",
           "select_listed", "write_odgt", "odgt_main",
           "SampleResult", "CheckReport", "check_lists", "check_main", "CLASS_WEIGHT_RULES",
           "class_weights_from_counts", "format_weights", "ClassStatistics", "class_statistics"]

_SHOWN = 20  # problems of one kind printed before "... and N more"


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


def _print_list(title: str, items: Sequence[str], out) -> None:
    if not items:
        return
    print(f"{title}: {len(items)}", file=out)
    for item in items[:_SHOWN]:
        print(f"  {item}", file=out)
    if len(items) > _SHOWN:
        print(f"  ... and {len(items) - _SHOWN} more (all listed in the report file)", file=out)


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


def _split_by_lists(report: PairReport, train_list: str | None, val_list: str | None,
                    suffixes: Sequence[str], out
                    ) -> tuple[dict[str, list[dict]], dict[str, ListedSplit]]:
    """Training and validation records as ``--train-list`` / ``--val-list`` say:
    each list's pairs in its order; a split without a list gets every pair the
    other list does not name."""
    listed = {split: select_listed(report, read_split_list(path), suffixes, path)
              for split, path in (("training", train_list), ("validation", val_list)) if path}
    lists = {split: sel.pairs for split, sel in listed.items()}
    named = {key for sel in listed.values() for key in sel.keys}
    rest = [p for p, key in zip(report.pairs, report.keys) if key not in named]
    if len(listed) == 1:
        lists["validation" if "training" in listed else "training"] = rest
    elif rest:
        print(f"{len(rest)} pairs are in neither list (left out), e.g. "
              f"{rest[0]['fpath_img']}", file=out)
    if len(listed) == 2:
        both = set(listed["training"].keys) & set(listed["validation"].keys)
        if both:
            print(f"WARNING: {len(both)} samples are in both lists (kept in both), e.g. "
                  f"{sorted(both)[0]}", file=out)
    return {s: lists[s] for s in ("training", "validation")}, listed


def odgt_main(args: argparse.Namespace, out=None) -> int:
    """The ``odgt`` subcommand; returns the exit status."""
    out = out or sys.stdout
    train_list, val_list = getattr(args, "train_list", None), getattr(args, "val_list", None)
    if bool(args.val_images) != bool(args.val_masks):
        print("error: give both --val-images and --val-masks, or neither", file=sys.stderr)
        return 2
    if (train_list or val_list) and (args.val_images or args.val_fraction is not None):
        print("error: --train-list/--val-list choose the split; leave out "
              f"{'--val-images/--val-masks' if args.val_images else '--val-fraction'}",
              file=sys.stderr)
        return 2
    folders = [args.images, args.masks] + ([args.val_images, args.val_masks] if args.val_images
                                           else [])
    folders = [os.path.abspath(f) for f in folders]
    root = os.path.abspath(args.root) if args.root else os.path.commonpath(folders)
    out_dir = os.path.abspath(args.out) if args.out else root
    reports = {"training": pair_folders(folders[0], folders[1], args.image_suffix,
                                        args.mask_suffix)}
    if args.val_images:
        reports["validation"] = pair_folders(folders[2], folders[3], args.image_suffix,
                                             args.mask_suffix)
    for split, rep in reports.items():
        _print_list(f"[{split}] images without a mask (left out)", rep.images_without_mask, out)
        _print_list(f"[{split}] masks without an image (left out)", rep.masks_without_image, out)
        _print_list(f"[{split}] image/mask size mismatches (left out)", rep.size_mismatches, out)
        _print_list(f"[{split}] unreadable files (left out)", rep.unreadable, out)
        _print_list(f"[{split}] two files for one key (second left out)", rep.duplicates, out)
        if rep.not_matching_suffix:
            print(f"[{split}] {len(rep.not_matching_suffix)} files without the suffix were not "
                  f"considered (e.g. {rep.not_matching_suffix[0]})", file=out)
    listed: dict[str, ListedSplit] = {}
    if args.val_images:
        lists = {"training": reports["training"].pairs, "validation": reports["validation"].pairs}
    elif train_list or val_list:
        lists, listed = _split_by_lists(reports["training"], train_list, val_list,
                                        (args.image_suffix, args.mask_suffix), out)
        for split, sel in listed.items():
            _print_list(f"[{split}] listed but not found (left out)", sel.not_found, out)
            _print_list(f"[{split}] listed twice (kept once)", sel.repeated, out)
    else:
        fraction = 0.1 if args.val_fraction is None else args.val_fraction
        train, val = split_pairs(reports["training"].pairs, fraction, args.seed)
        lists = {"training": train, "validation": val}
    names = {"training": args.train_name, "validation": args.val_name}
    written = {}
    for split, records in lists.items():
        if not records:
            continue
        path = os.path.join(out_dir, names[split])
        write_odgt(records, path, root)
        written[split] = path
        print(f"{split}: {len(records)} samples -> {path}", file=out)
    if not written:
        print("error: no image/mask pairs found", file=sys.stderr)
        return 1
    report_path = os.path.join(out_dir, "odgt_report.tsv")
    _write_report(report_path, reports, listed)
    errors = sum(rep.errors for rep in reports.values()) + sum(
        len(sel.not_found) for sel in listed.values())
    print(f"report of every file left out: {report_path}", file=out)
    print("config: DATASET.root_dataset " + root + "".join(
        f" DATASET.list_{'train' if s == 'training' else 'val'} {p}" for s, p in written.items()),
          file=out)
    if errors:
        print(f"{errors} problem(s) above: fix them or accept that those files are left out",
              file=sys.stderr)
    return 1 if errors else 0


# ============================================================================ class weights

CLASS_WEIGHT_RULES = ("median_frequency", "inverse", "inverse_sqrt")


def class_weights_from_counts(pixels: Any, present: Any, rule: str) -> np.ndarray:
    """Loss weights of K classes (float64) by ``rule``, from ``pixels[k]`` (labeled
    pixels of class k in a list) and ``present[k]`` (labeled pixels of the images
    that contain class k):

    * ``median_frequency`` (Eigen & Fergus, ICCV 2015): ``freq_k = pixels[k] /
      present[k]``, ``w_k = median(freq) / freq_k``;
    * ``inverse``: ``w_k = 1 / (S * share_k)`` with ``share_k = pixels[k] /
      sum(pixels)`` over the S classes seen (1 for every class of a balanced list);
    * ``inverse_sqrt``: the square root of ``inverse``.

    A class with no pixel gets 1.0 (no pixel of it reaches the loss either).
    """
    pixels = np.asarray(pixels, np.float64)
    present = np.asarray(present, np.float64)
    if rule not in CLASS_WEIGHT_RULES:
        raise ValueError(f"class weight rule {rule!r} is not one of {list(CLASS_WEIGHT_RULES)}")
    weights = np.ones(len(pixels))
    seen = pixels > 0
    if not seen.any():
        return weights
    if rule == "median_frequency":
        freq = pixels[seen] / present[seen]
        weights[seen] = np.median(freq) / freq
    else:
        share = pixels[seen] / pixels[seen].sum()
        weights[seen] = 1.0 / (seen.sum() * share)
        if rule == "inverse_sqrt":
            weights[seen] = np.sqrt(weights[seen])
    return weights


def format_weights(weights: Sequence[float]) -> str:
    """``[w0, w1, ...]`` with 4 significant digits: a ``TRAIN.class_weights`` value."""
    return "[" + ", ".join(f"{float(w):.4g}" for w in weights) + "]"


# ============================================================================ check

@dataclass
class SampleResult:
    """What checking one odgt line found."""

    split: str
    where: str
    errors: list[str] = field(default_factory=list)
    size: tuple[int, int] | None = None  # image (width, height)
    pixels: np.ndarray | None = None  # per annotation value 0..num_class
    # colours of a colour-coded mask that are not in the class table: [((r, g, b), px)]
    unknown_colors: list | None = None
    unknown_message: str = ""  # the error naming them, for one mask
    seg_path: str = ""


def _read_mask(res: SampleResult, seg_path: str, fmt: LabelFormat,
               num_class: int) -> np.ndarray | None:
    """The annotation (0 = unlabeled), its per-value pixel counts in ``res.pixels``;
    None and the problem recorded in ``res`` when it cannot be read."""
    res.seg_path = seg_path
    try:
        segm = read_annotation(seg_path, num_class, fmt)
    except UnknownColorsError as exc:
        res.unknown_colors = exc.colors
        res.unknown_message = str(exc)
        return None
    except DatasetError as exc:
        res.errors.append(str(exc))
        return None
    res.pixels = np.bincount(segm.reshape(-1).astype(np.int64), minlength=num_class + 1)
    return segm


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
    segm = _read_mask(res, seg_path, fmt, num_class)
    if img is not None:
        w, h = rec.get("width"), rec.get("height")
        if (w, h) != img.size:
            res.errors.append(f"{img_path}: odgt says {w}x{h} but the image is "
                              f"{img.size[0]}x{img.size[1]} (width x height)")
    if img is not None and segm is not None and (segm.shape[1], segm.shape[0]) != img.size:
        res.errors.append(f"{seg_path}: annotation size {segm.shape[1]}x{segm.shape[0]} differs "
                          f"from image {img_path} size {img.size[0]}x{img.size[1]}")
    return res


def _count_mask(task: tuple[str, str, dict, str, LabelFormat, int]) -> SampleResult:
    split, where, rec, root, fmt, num_class = task
    res = SampleResult(split, where)
    _read_mask(res, os.path.join(root, rec["fpath_segm"]), fmt, num_class)
    return res


def _run_tasks(fn: Any, tasks: list, workers: int, progress: bool) -> list[SampleResult]:
    """``fn`` over ``tasks`` in ``workers`` processes (0: one per core; 1 or few
    tasks: in this process), in order, with a progress bar on stderr."""
    from tqdm import tqdm
    workers = workers or (os.cpu_count() or 1)
    results: list[SampleResult] = []
    with tqdm(total=len(tasks), desc="reading", unit="img", disable=not progress,
              file=sys.stderr) as bar:
        if workers > 1 and len(tasks) > 1:
            with multiprocessing.get_context("spawn").Pool(min(workers, len(tasks))) as pool:
                for res in pool.imap(fn, tasks, chunksize=4):
                    results.append(res)
                    bar.update(1)
        else:
            for task in tasks:
                results.append(fn(task))
                bar.update(1)
    return results


def _read_lists(lists: dict[str, str]) -> tuple[list[tuple[str, str, dict]], list[str]]:
    """Parsed (split, where, record) entries of every list, and the problems found."""
    entries, errors = [], []
    for split, path in lists.items():
        if not os.path.isfile(path):
            errors.append(f"{path}: odgt file not found ({split} list)")
            continue
        found = 0
        for where, rec, error in read_odgt_lines(path, strict_utf8=False):
            if error is not None:
                errors.append(error)
                continue
            missing = [k for k in ("fpath_img", "fpath_segm", "width", "height")
                       if not isinstance(rec, dict) or k not in rec]
            if missing:
                errors.append(f"{where}: malformed odgt entry (missing {', '.join(missing)})")
                continue
            entries.append((split, where, rec))
            found += 1
        if not found:
            errors.append(f"{path}: no samples ({split} list)")
    return entries, errors


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


def _present_pixels(pixels: np.ndarray) -> np.ndarray:
    """Per value 0..K: the image's labeled pixels where the value occurs, else 0."""
    return np.where(pixels > 0, pixels[1:].sum(), 0)


def check_lists(lists: dict[str, str], root: str, fmt: LabelFormat, num_class: int,
                names: dict[int, str], workers: int = 0, progress: bool = True,
                table: ClassTable | None = None) -> CheckReport:
    """Check every sample of ``lists`` (split name -> odgt path); ``workers`` processes
    (0: one per core). ``table``: the class table, named in the hint for colours
    of colour-coded masks that are not in it."""
    entries, errors = _read_lists(lists)
    tasks = [(split, where, rec, root, fmt, num_class) for split, where, rec in entries]
    results = _run_tasks(_check_sample, tasks, workers, progress)
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
            present[res.split] += _present_pixels(res.pixels)
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
    return CheckReport(counts, errors, warnings, pixels, images, w, h, present)


@dataclass
class ClassStatistics:
    """Labeled pixels per class of an odgt list (0-based classes)."""

    pixels: np.ndarray  # K: pixels of class k
    present: np.ndarray  # K: labeled pixels of the images that contain class k
    images: np.ndarray  # K: images that contain class k
    num_samples: int

    def weights(self, rule: str) -> np.ndarray:
        """``class_weights_from_counts`` of these counts."""
        return class_weights_from_counts(self.pixels, self.present, rule)


def class_statistics(odgt: str, root: str, fmt: LabelFormat, num_class: int, workers: int = 0,
                     progress: bool = False) -> ClassStatistics:
    """Read every mask of ``odgt`` (``workers`` processes, 0: one per core) and count
    the labeled pixels per class. Raises DatasetError naming the list, the line
    and the mask at the first unreadable one (``datatools check`` lists them all)."""
    entries, errors = _read_lists({"list": odgt})
    tasks = [(split, where, rec, root, fmt, num_class) for split, where, rec in entries]
    results = _run_tasks(_count_mask, tasks, workers if len(tasks) > 16 else 1, progress)
    for res in results:
        errors += [f"{res.where}: {e}" for e in res.errors + [res.unknown_message] if e]
    if errors:
        raise DatasetError(f"{errors[0]} (python -m mit_semseg datatools check lists every "
                           f"problem)")
    pixels = np.zeros(num_class + 1, np.int64)
    present = np.zeros(num_class + 1, np.int64)
    images = np.zeros(num_class + 1, np.int64)
    for res in results:
        pixels += res.pixels
        present += _present_pixels(res.pixels)
        images += res.pixels > 0
    return ClassStatistics(pixels[1:], present[1:], images[1:], len(results))


def _weights_split(splits: Sequence[str]) -> str:
    return "train" if "train" in splits else splits[0]


_SUGGESTED = (("median_frequency", "mf weight",
               "median frequency (classes small where they occur)"),
              ("inverse", "inv weight", "inverse share (classes few images show)"))


def _print_check(report: CheckReport, names: dict[int, str], fmt: LabelFormat, out) -> None:
    splits = list(report.num_samples)
    print(f"Checked {sum(report.num_samples.values())} samples ("
          + ", ".join(f"{s} {n}" for s, n in report.num_samples.items())
          + f"); label_format {fmt.kind}, {len(names)} classes", file=out)
    if report.width_range:
        print(f"Image sizes: width {report.width_range[0]}..{report.width_range[1]}, "
              f"height {report.height_range[0]}..{report.height_range[1]}", file=out)
    base = _weights_split(splits) if splits else ""
    weights = {}
    if base and report.pixels[base][1:].sum():
        weights = {rule: class_weights_from_counts(report.pixels[base][1:],
                                                   report.present[base][1:], rule)
                   for rule, _, _ in _SUGGESTED}
    width = max([len(n) for n in names.values()] + [10])
    head = "".join(f"  {s + ' px%':>14} {s + ' imgs':>12}" for s in splits)
    head += "".join(f"  {column:>10}" for rule, column, _ in _SUGGESTED if rule in weights)
    print(f"{'class':>5} {'name':<{width}}{head}", file=out)
    totals = {s: max(int(report.pixels[s].sum()), 1) for s in splits}
    for k in [-1] + list(range(len(names))):
        name = "(unlabeled)" if k < 0 else names.get(k, f"class_{k}")
        cells = "".join(f"  {report.pixels[s][k + 1] / totals[s] * 100:13.2f}% "
                        f"{int(report.images[s][k + 1]):12d}" for s in splits)
        if k >= 0:
            cells += "".join(f"  {w[k]:10.3f}" for w in weights.values())
        print(f"{'' if k < 0 else k:>5} {name:<{width}}{cells}", file=out)
    if weights:
        print(f"Suggested class weights from the {base} list (docs/training.md):", file=out)
        pad = max(len(title) for _, _, title in _SUGGESTED) + 1
        for rule, _, title in _SUGGESTED:
            print(f"  {title + ':':<{pad}} TRAIN.class_weights "
                  f"\"{format_weights(weights[rule])}\"", file=out)
        print(f"  or TRAIN.class_weight_rule {'|'.join(CLASS_WEIGHT_RULES)} computes them when "
              f"training starts", file=out)
    for warning in report.warnings:
        print(f"WARNING: {warning}", file=out)
    for error in report.errors:
        print(f"ERROR: {error}", file=out)
    print(f"{len(report.errors)} error(s), {len(report.warnings)} warning(s)", file=out)


def check_main(args: argparse.Namespace, cfg: Any, out=None) -> int:
    """The ``check`` subcommand on a loaded config; returns the exit status."""
    out = out or sys.stdout
    fmt = label_format(cfg)
    table = class_table(cfg, strict=True)
    names = table.name_dict()
    if args.odgt:
        lists = {os.path.basename(p): p for p in args.odgt}
    else:
        lists = {"train": cfg.DATASET.list_train, "val": cfg.DATASET.list_val}
    report = check_lists(lists, cfg.DATASET.root_dataset, fmt, int(cfg.DATASET.num_class),
                         names, args.workers, progress=not args.quiet, table=table)
    _print_check(report, names, fmt, out)
    return 1 if report.errors else 0
