"""``python -m mit_semseg datatools``: prepare and check your own dataset
(``odgt``: pair folders into odgt lists; ``check``: read every sample)."""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from ..data.io import IMAGE_EXTENSIONS
from ..data.tools import check_main, odgt_main
from ..runtime.command import parse_command, run_command


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m mit_semseg datatools",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Exit status: 0 no problem, 1 problems found or error (one line), 2 usage error.",
        description="Prepare and check your own dataset (see docs/custom-dataset.md).")
    sub = parser.add_subparsers(dest="command", required=True)
    odgt = sub.add_parser(
        "odgt", formatter_class=argparse.RawDescriptionHelpFormatter,
        help="pair image and mask folders and write training/validation odgt lists",
        description="Pair images and masks by relative folder and file stem (recursively; "
                    f"{' '.join(IMAGE_EXTENSIONS)}) and write odgt lists with width/height. "
                    "Unpaired files, size mismatches and unreadable files are listed and left "
                    "out (exit status 1 unless the only unpaired files are images without "
                    "masks).",
        epilog="examples:\n"
               "  VOC-like:        odgt --images VOC/JPEGImages --masks VOC/SegmentationClass "
               "--train-list VOC/ImageSets/Segmentation/train.txt "
               "--val-list VOC/ImageSets/Segmentation/val.txt\n"
               "  a random split:  odgt --images IMAGES --masks MASKS --val-fraction 0.1\n"
               "  Cityscapes-like: odgt --images leftImg8bit/train --masks gtFine/train "
               "--val-images leftImg8bit/val --val-masks gtFine/val --image-suffix _leftImg8bit "
               "--mask-suffix _gtFine_labelTrainIds")
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

    check = sub.add_parser(
        "check", help="read every sample of the odgt lists and report all problems",
        description="Read every image and mask of DATASET.list_train and DATASET.list_val (or "
                    "--odgt lists) with the config's label convention (DATASET.label_format, "
                    "ignore_label, class_table) and report every problem with file and odgt "
                    "line, per-class pixel shares and image counts, and image sizes. Exit "
                    "status 1 on errors.",
        epilog="example: python -m mit_semseg datatools check --cfg config/custom.yaml "
               "DATASET.num_class 21")
    check.add_argument("--cfg", required=True, metavar="FILE", help="config file")
    check.add_argument("--odgt", nargs="+", metavar="LIST",
                       help="odgt lists to check instead of the config's train and val lists")
    check.add_argument("--workers", type=int, default=0,
                       help="processes reading samples (default: one per core)")
    check.add_argument("--quiet", action="store_true", help="no progress bar")
    check.add_argument("opts", nargs="*", default=[], metavar="KEY VALUE",
                       help="config overrides, before or after the flags, e.g. "
                            "DATASET.root_dataset data/mine")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = _parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    subparsers = parser._subparsers._group_actions[0].choices
    if not argv or argv[0] not in subparsers:
        parser.parse_args(argv)  # help, or the usage error naming the choices
    args = parse_command(subparsers[argv[0]], argv[1:])
    args.command = argv[0]
    if args.command == "odgt":
        return run_command(lambda: odgt_main(args))

    def check() -> int:
        from ..config import load_cfg
        return check_main(args, load_cfg(args.cfg, args.opts))
    return run_command(check)
