"""Measure class weights on an imbalanced synthetic set (docs/training.md).

The synthetic scenes with 6 classes (300 training, 60 validation images, 64-96
px) are made imbalanced: of the training images that show the last class
("checker"), only 1 in ``--keep-every`` stays in the training list; the
validation list keeps them all. A MobileNetV2-dilated + C1 model is trained
from random weights for ``--epochs`` x ``--iters`` iterations with each
``TRAIN.class_weight_rule`` (``none`` = unweighted) and seed, and the
validation IoU of the rare class, the mean IoU and the pixel accuracy are
printed. ``--curves PNG`` also trains one longer run with validation every
epoch, the best checkpoint by the rare class's IoU and early stopping, and
draws its curves.

    python tools/class_weights.py [--work /tmp/mit_semseg_class_weights] [--seeds 304 305 306]
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from mit_semseg.commands import datatools  # noqa: E402
from mit_semseg.config import load_cfg  # noqa: E402
from mit_semseg.data.synthetic import CLASS_NAMES, make_synthetic_dataset  # noqa: E402
from mit_semseg.training import main as train  # noqa: E402
from mit_semseg.training.curves import plot_curves  # noqa: E402
from mit_semseg.training.monitor import read_metrics  # noqa: E402

NUM_CLASS, RARE = 6, 5  # the rare class: 0-based index 5, "checker"


def _dataset(root: str, keep_every: int) -> None:
    make_synthetic_dataset(root, num_train=300, num_val=60, size_range=(64, 96),
                           num_class=NUM_CLASS, seed=0)
    odgt = os.path.join(root, "training.odgt")
    with open(odgt) as fh:
        records = [json.loads(line) for line in fh]
    kept, seen = [], 0
    for rec in records:
        mask = np.asarray(Image.open(os.path.join(root, rec["fpath_segm"])))
        if (mask == RARE + 1).any():
            seen += 1
            if seen % keep_every:
                continue
        kept.append(rec)
    with open(odgt, "w") as fh:
        fh.write("".join(json.dumps(r) + "\n" for r in kept))
    print(f"training list: {len(kept)} of {len(records)} images; {seen} showed "
          f"{CLASS_NAMES[RARE]}, {seen // keep_every} of them kept")


def _opts(root: str, out: str, *extra) -> list[str]:
    return [str(o) for o in (
        "DATASET.root_dataset", root, "DATASET.list_train", os.path.join(root, "training.odgt"),
        "DATASET.list_val", os.path.join(root, "validation.odgt"),
        "DATASET.num_class", NUM_CLASS, "DATASET.class_table", os.path.join(root, "classes.csv"),
        "DATASET.imgSizes", "(64, 80, 96)", "DATASET.imgMaxSize", 128,
        "MODEL.arch_encoder", "mobilenetv2dilated", "MODEL.arch_decoder", "c1",
        "MODEL.fc_dim", 320, "MODEL.pretrained", False, "MODEL.bn_momentum", 0.1,
        "TRAIN.batch_size_per_gpu", 4, "TRAIN.workers", 1, "TRAIN.disp_iter", 50,
        "TRAIN.ignore_padding", True, "TRAIN.num_threads", 1, "TRAIN.eval_imgSizes", "(80,)",
        "VAL.workers", 0, "DIR", out, *extra)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", default="/tmp/mit_semseg_class_weights")
    parser.add_argument("--seeds", type=int, nargs="+", default=[304, 305, 306])
    parser.add_argument("--rules", nargs="+",
                        default=["none", "median_frequency", "inverse_sqrt", "inverse"])
    parser.add_argument("--keep-every", type=int, default=20)
    parser.add_argument("--iters", type=int, default=100, help="iterations per epoch")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--curves", metavar="PNG", help="also draw a validated run's curves")
    args = parser.parse_args()
    root = os.path.join(args.work, f"data-keep{args.keep_every}")
    if not os.path.isfile(os.path.join(root, "training.odgt")):
        _dataset(root, args.keep_every)
    datatools.main(["check", "--cfg", "", "--workers", "1", "--quiet", *_opts(root, "")])
    rows = []
    for rule in args.rules:
        for seed in args.seeds:
            out = os.path.join(args.work, f"keep{args.keep_every}-{rule}-{seed}")
            if not os.path.isfile(os.path.join(out, "best.json")):
                train(load_cfg(None, _opts(
                    root, out, "TRAIN.seed", seed, "TRAIN.epoch_iters", args.iters,
                    "TRAIN.num_epoch", args.epochs, "TRAIN.eval_every", args.epochs,
                    "TRAIN.class_weight_rule", "" if rule == "none" else rule)), "cpu")
            last = [r for r in read_metrics(out) if "val_mean_iou" in r][-1]
            rows.append((rule, seed, list(last["val_class_iou"].values())[RARE],
                         last["val_mean_iou"], last["val_pixel_accuracy"]))
    print(f"validation after {args.epochs * args.iters} iterations; rare class "
          f"{CLASS_NAMES[RARE]}")
    for rule in args.rules:
        mine = [r for r in rows if r[0] == rule]
        for _, seed, rare, miou, acc in mine:
            print(f"  {rule:>16} seed {seed}: {CLASS_NAMES[RARE]} IoU {rare:.3f}, mean IoU "
                  f"{miou:.3f}, pixel accuracy {acc * 100:.1f}%")
        print(f"  {rule:>16} mean   : {CLASS_NAMES[RARE]} IoU "
              f"{np.mean([r[2] for r in mine]):.3f}, mean IoU {np.mean([r[3] for r in mine]):.3f},"
              f" pixel accuracy {np.mean([r[4] for r in mine]) * 100:.1f}%")
    if args.curves:
        out = os.path.join(args.work, f"keep{args.keep_every}-curves")
        train(load_cfg(None, _opts(
            root, out, "TRAIN.epoch_iters", 40, "TRAIN.num_epoch", 10, "TRAIN.eval_every", 1,
            "TRAIN.best_metric", f"iou:{CLASS_NAMES[RARE]}", "TRAIN.early_stop", 3,
            "TRAIN.class_weight_rule", "inverse_sqrt")), "cpu")
        plot_curves(read_metrics(out), args.curves,
                    f"rare class {CLASS_NAMES[RARE]}: inverse_sqrt class weights, best by "
                    f"iou:{CLASS_NAMES[RARE]}, early_stop 3")
        print(f"curves written to {args.curves}")


if __name__ == "__main__":
    main()
