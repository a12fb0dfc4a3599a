"""Your own dataset: folders of images and masks to odgt lists, and a check of
every sample. Command line::

    python -m mit_semseg datatools odgt --images IMG_DIR --masks MASK_DIR --val-fraction 0.1
    python -m mit_semseg datatools check --cfg config/custom.yaml

``odgt`` pairs files by relative folder and stem (after removing the optional
``--image-suffix`` / ``--mask-suffix``), reads only the file headers for the
sizes, and writes ``training.odgt`` / ``validation.odgt`` (paths relative to
``--root``). Anything it leaves out (unpaired files, size mismatches,
unreadable headers, two files for one key) is listed.

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
from .classes import class_table, label_format
from .datasets import read_odgt_lines
from .io import (IMAGE_EXTENSIONS, DatasetError, LabelFormat, find_recursive, read_annotation,
                 read_image)

__all__ = ["PairReport", "pair_folders", "split_pairs", "write_odgt", "odgt_main",
           "SampleResult", "CheckReport", "check_lists", "check_main", "main"]

_SHOWN = 20  # problems of one kind printed before "... and N more"


# ============================================================================ odgt

@dataclass
class PairReport:
    """Result of pairing one image folder with one mask folder."""

    pairs: list[dict] = field(default_factory=list)  # odgt records (absolute paths)
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
    imgs = _keyed(images, image_suffix, report, "image")
    segs = _keyed(masks, mask_suffix, report, "mask")
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
    return report


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


def _write_report(path: str, reports: dict[str, PairReport]) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for split, rep in reports.items():
            for title, items in (("images without mask", rep.images_without_mask),
                                 ("masks without image", rep.masks_without_image),
                                 ("size mismatches", rep.size_mismatches),
                                 ("unreadable", rep.unreadable), ("duplicates", rep.duplicates),
                                 ("not matching the suffix", rep.not_matching_suffix)):
                for item in items:
                    fh.write(f"{split}\t{title}\t{item}\n")


def odgt_main(args: argparse.Namespace, out=None) -> int:
    """The ``odgt`` subcommand; returns the exit status."""
    out = out or sys.stdout
    if bool(args.val_images) != bool(args.val_masks):
        print("error: give both --val-images and --val-masks, or neither", file=sys.stderr)
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
    if args.val_images:
        lists = {"training": reports["training"].pairs, "validation": reports["validation"].pairs}
    else:
        train, val = split_pairs(reports["training"].pairs, args.val_fraction, args.seed)
        lists = {"training": train, "validation": val}
    for split, rep in reports.items():
        _print_list(f"[{split}] images without a mask (left out)", rep.images_without_mask, out)
        _print_list(f"[{split}] masks without an image (left out)", rep.masks_without_image, out)
        _print_list(f"[{split}] image/mask size mismatches (left out)", rep.size_mismatches, out)
        _print_list(f"[{split}] unreadable files (left out)", rep.unreadable, out)
        _print_list(f"[{split}] two files for one key (second left out)", rep.duplicates, out)
        if rep.not_matching_suffix:
            print(f"[{split}] {len(rep.not_matching_suffix)} files without the suffix were not "
                  f"considered (e.g. {rep.not_matching_suffix[0]})", file=out)
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
    _write_report(report_path, reports)
    errors = sum(rep.errors for rep in reports.values())
    print(f"report of every file left out: {report_path}", file=out)
    print("config: DATASET.root_dataset " + root + "".join(
        f" DATASET.list_{'train' if s == 'training' else 'val'} {p}" for s, p in written.items()),
          file=out)
    if errors:
        print(f"{errors} problem(s) above: fix them or accept that those files are left out",
              file=sys.stderr)
    return 1 if errors else 0


# ============================================================================ check

@dataclass
class SampleResult:
    """What checking one odgt line found."""

    split: str
    where: str
    errors: list[str] = field(default_factory=list)
    size: tuple[int, int] | None = None  # image (width, height)
    pixels: np.ndarray | None = None  # per annotation value 0..num_class


def _check_sample(task: tuple[str, str, dict, str, LabelFormat, int]) -> SampleResult:
    split, where, rec, root, fmt, num_class = task
    res = SampleResult(split, where)
    img_path = os.path.join(root, rec["fpath_img"])
    seg_path = os.path.join(root, rec["fpath_segm"])
    img = segm = None
    try:
        img = read_image(img_path)
        res.size = img.size
    except DatasetError as exc:
        res.errors.append(str(exc))
    try:
        segm = read_annotation(seg_path, num_class, fmt)
    except DatasetError as exc:
        res.errors.append(str(exc))
    if img is not None:
        w, h = rec.get("width"), rec.get("height")
        if (w, h) != img.size:
            res.errors.append(f"{img_path}: odgt says {w}x{h} but the image is "
                              f"{img.size[0]}x{img.size[1]} (width x height)")
    if img is not None and segm is not None and (segm.shape[1], segm.shape[0]) != img.size:
        res.errors.append(f"{seg_path}: annotation size {segm.shape[1]}x{segm.shape[0]} differs "
                          f"from image {img_path} size {img.size[0]}x{img.size[1]}")
    if segm is not None:
        res.pixels = np.bincount(segm.reshape(-1).astype(np.int64), minlength=num_class + 1)
    return res


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


def check_lists(lists: dict[str, str], root: str, fmt: LabelFormat, num_class: int,
                names: dict[int, str], workers: int = 0, progress: bool = True) -> CheckReport:
    """Check every sample of ``lists`` (split name -> odgt path); ``workers`` processes
    (0: one per core)."""
    from tqdm import tqdm
    entries, errors = _read_lists(lists)
    tasks = [(split, where, rec, root, fmt, num_class) for split, where, rec in entries]
    workers = workers or (os.cpu_count() or 1)
    results: list[SampleResult] = []
    with tqdm(total=len(tasks), desc="checking", unit="img", disable=not progress,
              file=sys.stderr) as bar:
        if workers > 1 and len(tasks) > 1:
            with multiprocessing.get_context("spawn").Pool(min(workers, len(tasks))) as pool:
                for res in pool.imap(_check_sample, tasks, chunksize=4):
                    results.append(res)
                    bar.update(1)
        else:
            for task in tasks:
                results.append(_check_sample(task))
                bar.update(1)
    splits = list(lists)
    pixels = {s: np.zeros(num_class + 1, np.int64) for s in splits}
    images = {s: np.zeros(num_class + 1, np.int64) for s in splits}
    sizes = []
    for res in results:
        errors += [f"{res.where}: {e}" for e in res.errors]
        if res.pixels is not None:
            pixels[res.split] += res.pixels
            images[res.split] += res.pixels > 0
        if res.size is not None:
            sizes.append(res.size)
    errors.sort(key=_line_order)
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
    return CheckReport(counts, errors, warnings, pixels, images, w, h)


def _print_check(report: CheckReport, names: dict[int, str], fmt: LabelFormat, out) -> None:
    splits = list(report.num_samples)
    print(f"Checked {sum(report.num_samples.values())} samples ("
          + ", ".join(f"{s} {n}" for s, n in report.num_samples.items())
          + f"); label_format {fmt.kind}, {len(names)} classes", file=out)
    if report.width_range:
        print(f"Image sizes: width {report.width_range[0]}..{report.width_range[1]}, "
              f"height {report.height_range[0]}..{report.height_range[1]}", file=out)
    width = max([len(n) for n in names.values()] + [10])
    head = "".join(f"  {s + ' px%':>14} {s + ' imgs':>12}" for s in splits)
    print(f"{'class':>5} {'name':<{width}}{head}", file=out)
    totals = {s: max(int(report.pixels[s].sum()), 1) for s in splits}
    for k in [-1] + list(range(len(names))):
        name = "(unlabeled)" if k < 0 else names.get(k, f"class_{k}")
        cells = "".join(f"  {report.pixels[s][k + 1] / totals[s] * 100:13.2f}% "
                        f"{int(report.images[s][k + 1]):12d}" for s in splits)
        print(f"{'' if k < 0 else k:>5} {name:<{width}}{cells}", file=out)
    for warning in report.warnings:
        print(f"WARNING: {warning}", file=out)
    for error in report.errors:
        print(f"ERROR: {error}", file=out)
    print(f"{len(report.errors)} error(s), {len(report.warnings)} warning(s)", file=out)


def check_main(args: argparse.Namespace, cfg: Any, out=None) -> int:
    """The ``check`` subcommand on a loaded config; returns the exit status."""
    out = out or sys.stdout
    fmt = label_format(cfg)
    names = class_table(cfg, strict=True).name_dict()
    if args.odgt:
        lists = {os.path.basename(p): p for p in args.odgt}
    else:
        lists = {"train": cfg.DATASET.list_train, "val": cfg.DATASET.list_val}
    report = check_lists(lists, cfg.DATASET.root_dataset, fmt, int(cfg.DATASET.num_class),
                         names, args.workers, progress=not args.quiet)
    _print_check(report, names, fmt, out)
    return 1 if report.errors else 0
