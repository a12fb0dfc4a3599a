"""``python -m mit_semseg datatools``: prepare and check your own dataset
(``odgt``: pair folders into odgt lists; ``check``: read every sample).

The work is done by :mod:`mit_semseg.data.tools` (typed arguments, results as
dataclasses); this module parses the flags, prints the results, draws the
progress bar and chooses the exit status.
"""
from __future__ import annotations

import argparse
import sys
from contextlib import contextmanager
from typing import Callable, Iterator, Sequence, TextIO

from ..data.io import IMAGE_EXTENSIONS
from ..data.stats import CLASS_WEIGHT_RULES, class_weights_from_counts, format_weights
from ..data.tools import CheckReport, OdgtOptions, check_dataset, plan_odgt, write_odgt_lists
from ..runtime.command import (EXIT_USAGE, CommandParser, add_overrides, command_parser,
                               parse_subcommand, run_command, subcommand_parser)

_SHOWN = 20  # problems of one kind printed before "... and N more"

_ODGT_DESCRIPTION = (
    f"Pair images and masks by relative folder and file stem (recursively; "
    f"{' '.join(IMAGE_EXTENSIONS)}) and write odgt lists with width/height. Unpaired files, "
    f"size mismatches and unreadable files are listed and left out (exit status 1 unless the "
    f"only unpaired files are images without masks).")
_ODGT_EPILOG = (
    "examples:\n"
    "  VOC-like:        odgt --images VOC/JPEGImages --masks VOC/SegmentationClass "
    "--train-list VOC/ImageSets/Segmentation/train.txt "
    "--val-list VOC/ImageSets/Segmentation/val.txt\n"
    "  a random split:  odgt --images IMAGES --masks MASKS --val-fraction 0.1\n"
    "  Cityscapes-like: odgt --images leftImg8bit/train --masks gtFine/train "
    "--val-images leftImg8bit/val --val-masks gtFine/val --image-suffix _leftImg8bit "
    "--mask-suffix _gtFine_labelTrainIds")
_CHECK_DESCRIPTION = (
    "Read every image and mask of DATASET.list_train and DATASET.list_val (or --odgt lists) "
    "with the config's label convention (DATASET.label_format, ignore_label, class_table) and "
    "report every problem with file and odgt line, per-class pixel shares and image counts, "
    "and image sizes. Exit status 1 on errors.")
_CHECK_EPILOG = ("example: python -m mit_semseg datatools check --cfg config/custom.yaml "
                 "DATASET.num_class 21")
_IMPORT_DESCRIPTION = (
    "Paint the shapes of an annotation export into masks in the ADE20K convention (0 "
    "unlabeled, class k as k), keeping the tools' class names in classes.csv, and write the "
    "odgt lists. Overlapping shapes: the later one in the file is on top. Every skipped or "
    "malformed shape and unknown class is reported with its file and index; exit status 1 "
    "when anything was skipped. The last line gives the overrides to train on the result.")
_IMPORT_EPILOG = (
    "examples:\n"
    "  datatools import labelme_folder/ --out data/mine --val-fraction 0.1\n"
    "  datatools import instances.json --images coco/images --out data/mine\n"
    "  datatools import task.zip --out data/mine            (CVAT segmentation masks)\n"
    "  datatools import export.json --images photos/ --out data/mine   (Label Studio)\n"
    "Needs the [coco] extra for COCO RLE (pip install -e '.[coco]').")


def build_parser() -> CommandParser:
    """The command's parser, one subcommand per action."""
    parser = command_parser(
        "python -m mit_semseg datatools",
        "Prepare and check your own dataset (see docs/custom-dataset.md).",
        "Exit status: 0 no problem, 1 problems found or error (one line), 2 usage error.",
        overrides=False)
    sub = parser.add_subparsers(dest="command", required=True)
    odgt = subcommand_parser(
        parser, sub, "odgt",
        "pair image and mask folders and write training/validation odgt lists",
        _ODGT_DESCRIPTION, _ODGT_EPILOG, overrides=False)
    odgt.add_argument("--images", required=True, help="folder of training images (recursive)")
    odgt.add_argument("--masks", required=True, help="folder of training masks (recursive)")
    odgt.add_argument("--val-images", help="folder of validation images (else --val-fraction)")
    odgt.add_argument("--val-masks", help="folder of validation masks")
    odgt.add_argument("--train-list", metavar="FILE",
                      help="text file naming the training samples, one per line (a stem such "
                           "as 2007_000032, a file name or a path; VOC's ImageSets/Segmentation/"
                           "train.txt): the training list holds exactly these, in this order")
    odgt.add_argument("--val-list", metavar="FILE",
                      help="the same for validation. With one list only, the other split gets "
                           "every other pair; samples listed but not found are reported (exit "
                           "status 1)")
    odgt.add_argument("--val-fraction", type=float, default=None,
                      help="share of the pairs drawn for validation when neither validation "
                           "folders nor split lists are given (default: 0.1; 0 = no validation "
                           "list)")
    odgt.add_argument("--seed", type=int, default=0, help="seed of that draw (default: 0)")
    odgt.add_argument("--image-suffix", default="",
                      help="end of image file stems to remove before pairing, e.g. _leftImg8bit")
    odgt.add_argument("--mask-suffix", default="",
                      help="end of mask file stems to remove before pairing, e.g. "
                           "_gtFine_labelTrainIds (other mask files are not considered)")
    odgt.add_argument("--root", help="folder the odgt paths are relative to (DATASET."
                                     "root_dataset; default: common parent of the folders)")
    odgt.add_argument("--out", help="folder for the odgt files (default: the root)")
    odgt.add_argument("--train-name", default="training.odgt", help="default: %(default)s")
    odgt.add_argument("--val-name", default="validation.odgt", help="default: %(default)s")

    check = subcommand_parser(
        parser, sub, "check", "read every sample of the odgt lists and report all problems",
        _CHECK_DESCRIPTION, _CHECK_EPILOG, overrides=False)
    check.add_argument("--cfg", required=True, metavar="FILE", help="config file")
    check.add_argument("--odgt", nargs="+", metavar="LIST",
                       help="odgt lists to check instead of the config's train and val lists")
    check.add_argument("--workers", type=int, default=0,
                       help="processes reading samples (default: one per core)")
    check.add_argument("--quiet", action="store_true", help="no progress bar")
    add_overrides(check, help="config overrides, before or after the flags, e.g. "
                              "DATASET.root_dataset data/mine")

    imp = subcommand_parser(
        parser, sub, "import",
        "turn a LabelMe / COCO / CVAT / Label Studio export into masks + odgt + class table",
        _IMPORT_DESCRIPTION, _IMPORT_EPILOG, overrides=False)
    imp.add_argument("source", help="a LabelMe folder or JSON file, a COCO JSON file, a CVAT "
                                    "'Segmentation mask 1.1' .zip (or its folder), or a Label "
                                    "Studio JSON export")
    imp.add_argument("--out", required=True, metavar="DIR",
                     help="dataset folder to write (images/, annotations/, training.odgt, "
                          "validation.odgt, classes.csv); importing again adds to it")
    imp.add_argument("--format", dest="fmt", default="auto",
                     choices=("auto", "labelme", "coco", "cvat", "label-studio"),
                     help="the export's format (default: auto, from the file)")
    imp.add_argument("--images", metavar="DIR",
                     help="where the images are when the export does not hold them")
    imp.add_argument("--classes", metavar="CSV|NAMES",
                     help="class table CSV or comma-separated names in id order, to keep ids "
                          "stable (default: DIR/classes.csv of an earlier import, else the "
                          "export's own list)")
    imp.add_argument("--val-fraction", type=float, default=0.0,
                     help="share of the images that go to validation.odgt (default: 0)")
    imp.add_argument("--seed", type=int, default=0, help="seed of that draw (default: 0)")
    imp.add_argument("--crowd", choices=("class", "unlabeled"), default="class",
                     help="COCO iscrowd regions: painted with their class, or left unlabeled")
    imp.add_argument("--use-predictions", action="store_true",
                     help="Label Studio: tasks without an annotation use their prediction")
    imp.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    name, parser, args = parse_subcommand(build_parser(), argv)
    return ACTIONS[name](parser, args)


# ============================================================================ odgt

def _print_list(title: str, items: Sequence[str], out: TextIO) -> None:
    if not items:
        return
    print(f"{title}: {len(items)}", file=out)
    for item in items[:_SHOWN]:
        print(f"  {item}", file=out)
    if len(items) > _SHOWN:
        print(f"  ... and {len(items) - _SHOWN} more (all listed in the report file)", file=out)


def _odgt(parser: CommandParser, args: argparse.Namespace) -> int:
    if bool(args.val_images) != bool(args.val_masks):
        print("error: give both --val-images and --val-masks, or neither", file=sys.stderr)
        return EXIT_USAGE
    if (args.train_list or args.val_list) and (args.val_images or args.val_fraction is not None):
        print("error: --train-list/--val-list choose the split; leave out "
              f"{'--val-images/--val-masks' if args.val_images else '--val-fraction'}",
              file=sys.stderr)
        return EXIT_USAGE

    def body() -> int:
        options = OdgtOptions(
            images=args.images, masks=args.masks, val_images=args.val_images,
            val_masks=args.val_masks, train_list=args.train_list, val_list=args.val_list,
            val_fraction=args.val_fraction, seed=args.seed, image_suffix=args.image_suffix,
            mask_suffix=args.mask_suffix, root=args.root, out=args.out,
            train_name=args.train_name, val_name=args.val_name)
        plan = plan_odgt(options)
        out = sys.stdout
        for split, rep in plan.reports.items():
            _print_list(f"[{split}] images without a mask (left out)", rep.images_without_mask,
                        out)
            _print_list(f"[{split}] masks without an image (left out)", rep.masks_without_image,
                        out)
            _print_list(f"[{split}] image/mask size mismatches (left out)", rep.size_mismatches,
                        out)
            _print_list(f"[{split}] unreadable files (left out)", rep.unreadable, out)
            _print_list(f"[{split}] two files for one key (second left out)", rep.duplicates,
                        out)
            if rep.not_matching_suffix:
                print(f"[{split}] {len(rep.not_matching_suffix)} files without the suffix were "
                      f"not considered (e.g. {rep.not_matching_suffix[0]})", file=out)
        if plan.unlisted:
            print(f"{len(plan.unlisted)} pairs are in neither list (left out), e.g. "
                  f"{plan.unlisted[0]['fpath_img']}", file=out)
        if plan.in_both:
            print(f"WARNING: {len(plan.in_both)} samples are in both lists (kept in both), e.g. "
                  f"{plan.in_both[0]}", file=out)
        for split, sel in plan.listed.items():
            _print_list(f"[{split}] listed but not found (left out)", sel.not_found, out)
            _print_list(f"[{split}] listed twice (kept once)", sel.repeated, out)
        done = write_odgt_lists(plan)
        for split, path in done.written.items():
            print(f"{split}: {done.counts[split]} samples -> {path}", file=out)
        print(f"report of every file left out: {done.report}", file=out)
        print("config: DATASET.root_dataset " + plan.root + "".join(
            f" DATASET.list_{'train' if s == 'training' else 'val'} {p}"
            for s, p in done.written.items()), file=out)
        if plan.errors:
            print(f"{plan.errors} problem(s) above: fix them or accept that those files are left "
                  f"out", file=sys.stderr)
        return 1 if plan.errors else 0
    return run_command(body)


# ============================================================================ check

_SUGGESTED = (("median_frequency", "mf weight",
               "median frequency (classes small where they occur)"),
              ("inverse", "inv weight", "inverse share (classes few images show)"))


@contextmanager
def _progress_bar(enabled: bool) -> Iterator[Callable[[int, int], None] | None]:
    """A ``progress(done, total)`` callback drawing a tqdm bar on stderr (None when
    not ``enabled``); the bar is closed on leaving."""
    if not enabled:
        yield None
        return
    from tqdm import tqdm
    bars: list = []

    def update(done: int, total: int) -> None:
        if not bars:
            bars.append(tqdm(total=total, desc="reading", unit="img", file=sys.stderr))
        bars[0].update(done - bars[0].n)
    try:
        yield update
    finally:
        for bar in bars:
            bar.close()


def _print_check(report: CheckReport, out: TextIO) -> None:
    """The check's report: counts, sizes, the class table with suggested weights,
    warnings and errors."""
    names = report.names
    splits = list(report.num_samples)
    print(f"Checked {sum(report.num_samples.values())} samples ("
          + ", ".join(f"{s} {n}" for s, n in report.num_samples.items())
          + f"); label_format {report.label_format}, {len(names)} classes", file=out)
    if report.width_range:
        print(f"Image sizes: width {report.width_range[0]}..{report.width_range[1]}, "
              f"height {report.height_range[0]}..{report.height_range[1]}", file=out)
    base = ("train" if "train" in splits else splits[0]) if splits else ""
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


def _check(parser: CommandParser, args: argparse.Namespace) -> int:
    def body() -> int:
        from ..config import load_cfg
        cfg = load_cfg(args.cfg, args.opts)
        with _progress_bar(not args.quiet) as progress:
            report = check_dataset(cfg, args.odgt, args.workers, progress)
        _print_check(report, sys.stdout)
        return 1 if report.errors else 0
    return run_command(body)


# ============================================================================ import

def _import(parser: CommandParser, args: argparse.Namespace) -> int:
    if not 0 <= args.val_fraction < 1:
        parser.error(f"--val-fraction must be in [0, 1), got {args.val_fraction}")

    def body() -> int:
        from ..data.annotations import import_annotations
        classes = args.classes
        if classes and not classes.lower().endswith(".csv"):
            classes = [c.strip() for c in classes.split(",") if c.strip()]
        with _progress_bar(not args.quiet) as progress:
            report = import_annotations(args.source, args.out, args.fmt, images=args.images,
                                        classes=classes, val_fraction=args.val_fraction,
                                        seed=args.seed, crowd=args.crowd,
                                        use_predictions=args.use_predictions, progress=progress)
        print(report.summary())
        print("train on it with: " + " ".join(report.config_opts))
        return 0 if report.ok else 1
    return run_command(body)


# action -> handler (its parser and arguments; returns the exit status)
ACTIONS: dict[str, Callable[[CommandParser, argparse.Namespace], int]] = {
    "odgt": _odgt, "check": _check, "import": _import}
