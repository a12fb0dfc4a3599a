"""Measure the annotation loop on the synthetic demo data (docs/custom-dataset.md,
"Annotation loop").

1. Round trips: the validation masks of the synthetic set -> COCO RLE, CVAT masks,
   Label Studio brushes, LabelMe polygons (several tolerances) -> imported back;
   prints the share of labeled pixels that changed, class names kept, sizes, times.
2. With --cfg/--ckpt (a trained demo model): pre-label the validation images with
   ``python -m mit_semseg prelabel`` and print the time per image and the share of
   labeled pixels a labeler has to correct (pre-label != ground truth).

    python tools/annotation_loop.py --root data/synthetic \\
        [--cfg config/synthetic-demo.yaml --ckpt ckpt/synthetic-demo --checkpoint epoch_4.pth]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from mit_semseg.data.annotations import (CocoWriter, CvatMaskWriter, LabelMeWriter,  # noqa: E402
                                         LabelStudioWriter, import_annotations)
from mit_semseg.data.classes import read_class_table  # noqa: E402
from mit_semseg.data.labelmap import read_label_map  # noqa: E402


def _masks(root: str, table) -> dict[str, np.ndarray]:
    out = {}
    with open(os.path.join(root, "validation.odgt")) as fh:
        for line in fh:
            rec = json.loads(line)
            images = os.path.join(root, "images")
            rel = os.path.relpath(os.path.join(root, rec["fpath_img"]), images)
            out[rel] = read_label_map(os.path.join(root, rec["fpath_segm"]), table.num_class)
    return out


def _size(path: str) -> int:
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def _compare(report, masks, num_class: int) -> tuple[int, int]:
    changed = labeled = 0
    for rel, lab in masks.items():
        got = read_label_map(os.path.join(report.out_dir, "annotations",
                                          os.path.splitext(rel)[0] + ".png"), num_class)
        changed += int((got != lab).sum())
        labeled += int((lab >= 0).sum())
    return changed, labeled


def round_trips(root: str, work: str) -> None:
    table = read_class_table(os.path.join(root, "classes.csv"))
    masks = _masks(root, table)
    total = sum(m.size for m in masks.values())
    print(f"{len(masks)} validation masks, {total} px, {len(table.names)} classes")
    images = os.path.join(root, "images")
    cases = [("coco", None), ("cvat", None), ("label-studio", None)] + \
        [("labelme", t) for t in (0.0, 0.5, 1.0, 2.0)]
    for fmt, tol in cases:
        name = fmt if tol is None else f"{fmt}@{tol}"
        t0 = time.perf_counter()
        if fmt == "coco":
            target = os.path.join(work, "coco.json")
            w = CocoWriter(target, table.names, table.colors)
        elif fmt == "cvat":
            target = os.path.join(work, "cvat.zip")
            w = CvatMaskWriter(target, table.names, table.colors)
        elif fmt == "label-studio":
            target = os.path.join(work, "ls", "tasks.json")
            w = LabelStudioWriter(target, table.names, table.colors)
        else:
            target = os.path.join(work, name)
            w = LabelMeWriter(target, table.names, tolerance=tol)
        points = 0
        for rel, lab in masks.items():
            if fmt == "labelme":
                path = w.add(os.path.join(images, rel), os.path.splitext(rel)[0], lab)
                with open(path) as fh:
                    points += sum(len(s["points"]) for s in json.load(fh)["shapes"])
            elif fmt == "cvat":
                w.add(os.path.splitext(rel)[0], lab)
            else:
                w.add(rel, lab)
        w.close()
        t1 = time.perf_counter()
        report = import_annotations(target, os.path.join(work, "in_" + name), fmt,
                                    images=images, classes=list(table.names),
                                    use_predictions=True)
        t2 = time.perf_counter()
        changed, _ = _compare(report, masks, table.num_class)
        extra = f", {points / len(masks):.0f} points/image" if fmt == "labelme" else ""
        print(f"{name:16s} changed {changed:6d} px = {100 * changed / total:.3f}%  "
              f"names kept {report.class_names == table.names}  problems {len(report.problems)}  "
              f"{_size(target) / 1024:.0f} KiB{extra}  write {t1 - t0:.2f} s  "
              f"import {t2 - t1:.2f} s")


def prelabel(root: str, cfg: str, ckpt: str, work: str, checkpoint: str | None = None) -> None:
    from mit_semseg.commands import prelabel as command
    table = read_class_table(os.path.join(root, "classes.csv"))
    masks = _masks(root, table)
    out = os.path.join(work, "pre")
    t0 = time.perf_counter()
    status = command.main(["--cfg", cfg, "--gpus", "cpu", "--imgs",
                           os.path.join(root, "images", "validation"), "--out", out,
                           "--formats", "all", "--review-below", "0.6", "--quiet",
                           "DIR", ckpt, "DATASET.root_dataset", root, "TEST.num_threads", "1",
                           *(["TEST.checkpoint", checkpoint] if checkpoint else [])])
    elapsed = time.perf_counter() - t0
    assert status == 0
    wrong = labeled = 0
    for rel, lab in masks.items():
        pred = read_label_map(os.path.join(out, "labels", os.path.basename(
            os.path.splitext(rel)[0]) + ".png"), table.num_class)
        keep = lab >= 0
        wrong += int((pred[keep] != lab[keep]).sum())
        labeled += int(keep.sum())
    print(f"prelabel: {len(masks)} images in {elapsed:.1f} s ({elapsed / len(masks):.2f} s/image, "
          f"model load included); pre-labels wrong on {100 * wrong / labeled:.2f}% of the "
          f"labeled pixels")
    with open(os.path.join(out, "coco.json")) as fh:
        anns = json.load(fh)["annotations"]
    flagged = [a for a in anns if a["review"]]
    print(f"regions: {len(anns)}, marked for review (confidence < 0.6): {len(flagged)} "
          f"({sum(a['area'] for a in flagged)} px)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default="data/synthetic", help="synthetic set (made if missing)")
    parser.add_argument("--cfg", help="config of a trained demo model")
    parser.add_argument("--ckpt", help="its checkpoint folder (DIR)")
    parser.add_argument("--checkpoint", help="TEST.checkpoint, e.g. epoch_2.pth (default: "
                                                 "the config's)")
    parser.add_argument("--work", default=None, help="scratch folder (default: a temporary one)")
    args = parser.parse_args()
    if not os.path.isfile(os.path.join(args.root, "validation.odgt")):
        from mit_semseg.data.synthetic import make_synthetic_dataset
        make_synthetic_dataset(args.root)
    work = args.work or tempfile.mkdtemp(prefix="annotation_loop_")
    round_trips(args.root, work)
    if args.cfg and args.ckpt:
        prelabel(args.root, args.cfg, args.ckpt, work, args.checkpoint)


if __name__ == "__main__":
    main()
