"""``python -m mit_semseg prelabel``: segment photos with a model and write the
predictions as pre-annotations for labelling tools.

Runs the model of a config (DIR/encoder_<TEST.checkpoint> +
DIR/decoder_<TEST.checkpoint>, as test.py) over an image, a folder (recursive)
or an odgt list and writes into --out what each labelling tool imports (the
files are listed below), so that a labeler corrects the model instead of
drawing from nothing.

A region is a 4-connected area of one class. With --review-below P, regions
whose mean confidence (the probability of their class) is below P are marked
for review: "review": true in COCO, the region text "review" in Label Studio,
the flag "review" in LabelMe; CVAT masks carry no flags, so there they are
left as background, to be drawn. Corrections come back with
python -m mit_semseg datatools import (docs/custom-dataset.md, "Annotation
loop").
"""
from __future__ import annotations

import os
from typing import Any, Sequence

from ..runtime.command import CommandParser, command_parser, parse_command, run_command

FORMATS = ("coco", "label-studio", "labelme", "cvat", "labels")

EPILOG = """\
files written into --out (--formats):
  coco.json                  coco: one compressed-RLE annotation per region
  label_studio/tasks.json    label-studio: tasks with brush pre-annotations, and
                             label_studio_config.xml, the labeling config they fit
  labelme/<name>.json        labelme: one polygon per region, simplified by
                             --tolerance pixels; imagePath points at the photo
  cvat_masks.zip             cvat: a "Segmentation mask 1.1" archive
  labels/<name>.png + .json  labels: label maps (class id + 1, the class colours
                             as palette) and the classes' pixel shares

examples:
  python -m mit_semseg prelabel --cfg config/synthetic-demo.yaml --imgs batch2/ --out prelabels/
  python -m mit_semseg prelabel --cfg CFG --imgs batch2/ --out pre/ --formats label-studio \\
      --ls-url-prefix "/data/local-files/?d=batch2/" --review-below 0.6
  python -m mit_semseg prelabel --cfg CFG --imgs list.odgt --out pre/ --formats labelme \\
      --tolerance 0 TEST.checkpoint best.pth

Formats that need an extra: coco (pip install -e ".[coco]"), labelme (".[polygons]").
Unreadable images are reported and skipped (the exit status stays 0).
Exit status: 0 done, 1 error (one line on stderr), 2 usage error, 130 interrupted.
"""

_DESCRIPTION = __doc__.split("\n\n", 1)[1]


def _formats(text: str) -> list[str]:
    chosen = [f.strip().lower() for f in text.split(",") if f.strip()]
    if chosen == ["all"]:
        return list(FORMATS)
    bad = [f for f in chosen if f not in FORMATS]
    if bad or not chosen:
        import argparse
        raise argparse.ArgumentTypeError(f"unknown format(s) {bad}; choose from "
                                         f"{', '.join(FORMATS)} or all")
    return list(dict.fromkeys(chosen))


def _relative_names(spec: str, paths: Sequence[str], root_dataset: str) -> list[str]:
    """Each image's path relative to what the tools are given: the folder; for an
    odgt list, DATASET.root_dataset or the list's folder (whichever holds it);
    else the file's name."""
    if os.path.isdir(spec):
        bases = [spec]
    elif spec.lower().endswith(".odgt"):
        bases = [b for b in (root_dataset, os.path.dirname(os.path.abspath(spec))) if b]
    else:
        bases = []
    out = []
    for path in paths:
        name = os.path.basename(path)
        for base in bases:
            rel = os.path.relpath(os.path.abspath(path), os.path.abspath(base))
            if not rel.startswith(".."):
                name = rel
                break
        out.append(name.replace(os.sep, "/"))
    return out


def _writers(args: Any, names: list[str], colors: Any) -> dict[str, Any]:
    from ..data import annotations as ann
    review = args.review_below
    out = {}
    for fmt in args.formats:
        if fmt == "coco":
            out[fmt] = ann.CocoWriter(os.path.join(args.out, "coco.json"), names, colors,
                                      review_below=review)
        elif fmt == "label-studio":
            out[fmt] = ann.LabelStudioWriter(os.path.join(args.out, "label_studio", "tasks.json"),
                                             names, colors, image_url_prefix=args.ls_url_prefix,
                                             review_below=review)
        elif fmt == "labelme":
            out[fmt] = ann.LabelMeWriter(os.path.join(args.out, "labelme"), names,
                                         tolerance=args.tolerance, review_below=review)
        elif fmt == "cvat":
            out[fmt] = ann.CvatMaskWriter(os.path.join(args.out, "cvat_masks.zip"), names, colors,
                                          review_below=review)
    return out


def prelabel(args: Any, cfg: Any, device: Any) -> int:
    """Segment ``args.imgs`` and feed every writer; returns 0."""
    import sys

    import numpy as np
    from tqdm import tqdm

    from ..data.annotations import regions as _regions
    from ..data.annotations import require_extras, unique_keys
    from ..data.io import DatasetError, read_image
    from ..inference.segmenter import Segmenter
    from ..prediction import list_test_images

    paths, _ = list_test_images(args.imgs, cfg.DATASET.root_dataset)
    rel = _relative_names(args.imgs, paths, cfg.DATASET.root_dataset)
    keys = unique_keys(rel)
    require_extras(args.formats)
    seg = Segmenter.from_config(cfg, device=device)
    names = [seg.names.get(k, f"class_{k}") for k in range(seg.engine.num_class)]
    colors = np.asarray(seg.colors)[:len(names)]
    writers = _writers(args, names, colors)
    skipped, review, count = 0, 0, 0
    for path, name, key in tqdm(list(zip(paths, rel, keys)), desc="prelabel", unit="image",
                                disable=args.quiet, file=sys.stderr):
        try:
            photo = read_image(path, exif_transpose=True)
        except DatasetError as exc:
            tqdm.write(f"Skipping unreadable image {exc}", file=sys.stderr)
            skipped += 1
            continue
        labels, conf = seg.predict(photo, return_confidence=True)
        for fmt, writer in writers.items():
            if fmt == "labelme":
                writer.add(path, key, labels, conf)
            elif fmt == "cvat":
                writer.add(key, labels, conf)
            else:
                writer.add(name, labels, conf)
        if "labels" in args.formats:
            seg.label_map(labels, os.path.join(args.out, "labels", key + ".png"))
        if args.review_below is not None:
            review += sum(r.review for r in _regions(labels, conf, args.review_below))
        count += 1
    written = [p for w in writers.values() for p in w.close()]
    shown = [p for p in written if not p.endswith(".json") or "labelme" not in p]
    if "labelme" in writers:
        shown.append(os.path.join(args.out, "labelme", "*.json"))
    if "labels" in args.formats:
        shown.append(os.path.join(args.out, "labels", "*.png"))
    print(f"Pre-labelled {count} image(s) with {len(names)} classes"
          + (f"; {review} region(s) below confidence {args.review_below} marked for review"
             if args.review_below is not None else "")
          + (f"; {skipped} unreadable skipped" if skipped else ""))
    for path in shown:
        print(f"  {path}")
    return 0


def build_parser() -> CommandParser:
    """The command's parser (flags and overrides)."""
    parser = command_parser("python -m mit_semseg prelabel", _DESCRIPTION, EPILOG,
                            config="required", devices="one")
    parser.add_argument("--imgs", required=True,
                        help="an image, a folder of images (recursive), or an .odgt list")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder for the files")
    parser.add_argument("--formats", type=_formats, default=list(FORMATS[:4]),
                        metavar="LIST", help=f"comma-separated, from {', '.join(FORMATS)}, or "
                                             f"all (default: coco,label-studio,labelme,cvat)")
    parser.add_argument("--tolerance", type=float, default=1.0, metavar="PX",
                        help="LabelMe polygons: Douglas-Peucker tolerance in pixels; 0 keeps "
                             "every border pixel (exact round trip). Default: %(default)s")
    parser.add_argument("--review-below", type=float, default=None, metavar="P",
                        help="mark regions whose mean confidence is below P (0..1) for review")
    parser.add_argument("--ls-url-prefix", default="", metavar="PREFIX",
                        help="Label Studio: put before each image's relative path in "
                             "data.image, e.g. /data/local-files/?d=photos/ (default: none)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = build_parser()
    args = parse_command(parser, argv)
    if args.review_below is not None and not 0 <= args.review_below <= 1:
        parser.error(f"--review-below must be in 0..1, got {args.review_below}")
    if args.tolerance < 0:
        parser.error(f"--tolerance must be >= 0 pixels, got {args.tolerance}")

    def body() -> int:
        from ..runtime.devices import resolve_device
        from ._shared import load_logged_config, set_num_threads
        cfg = load_logged_config(args.cfg, args.opts)
        set_num_threads(cfg, "TEST")
        return prelabel(args, cfg, resolve_device(args.gpus))
    return run_command(body)
