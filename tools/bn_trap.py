"""Measure the short-schedule BatchNorm trap (docs/custom-dataset.md).

A source model is trained on the synthetic scenes (8 classes), then fine-tuned
with MODEL.reinit_classifier on a small shifted dataset (5 classes, colours
channel-swapped and darkened) for 80 iterations, three ways: the original
BatchNorm momentum 0.001, the same plus TRAIN.precise_bn_iters 20, and
momentum 0.1. Prints the validation mean IoU of each and writes a longer
fine-tuning run's curves to docs/custom-dataset-curves.png.

    python docs/bn_trap.py [--work /tmp/mit_semseg_bn_trap]
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

import torch  # noqa: E402

import mit_semseg.training as T  # noqa: E402
from mit_semseg.config import load_cfg  # noqa: E402
from mit_semseg.training.curves import plot_curves  # noqa: E402
from mit_semseg.training.monitor import read_metrics  # noqa: E402
from mit_semseg.data.synthetic import make_synthetic_dataset  # noqa: E402

VARIANTS = {"momentum 0.001 (original)": (),
            "momentum 0.001 + precise_bn_iters 20": ("TRAIN.precise_bn_iters", 20),
            "momentum 0.1": ("MODEL.bn_momentum", 0.1)}


def _shifted_dataset(root: str) -> None:
    make_synthetic_dataset(root, num_train=40, num_val=20, size_range=(48, 96), num_class=5, seed=7)
    for split in ("training", "validation"):
        folder = os.path.join(root, "images", split)
        for name in os.listdir(folder):
            arr = np.asarray(Image.open(os.path.join(folder, name))).astype(np.float32)
            shifted = np.clip(arr[..., ::-1] * 0.55 + 20, 0, 255).astype(np.uint8)
            Image.fromarray(shifted).save(os.path.join(folder, name), quality=95)


def _opts(root: str, num_class: int, out: str, *extra) -> list[str]:
    return ["DATASET.root_dataset", root, "DATASET.list_train", f"{root}/training.odgt",
            "DATASET.list_val", f"{root}/validation.odgt", "DATASET.num_class", str(num_class),
            "DATASET.class_table", "classes.csv", "DATASET.imgSizes", "(64,)",
            "DATASET.imgMaxSize", "128", "MODEL.arch_encoder", "mobilenetv2dilated",
            "MODEL.arch_decoder", "c1", "MODEL.fc_dim", "320", "MODEL.pretrained", "False",
            "TRAIN.batch_size_per_gpu", "4", "TRAIN.workers", "1", "TRAIN.disp_iter", "50",
            "TRAIN.ignore_padding", "True", "TRAIN.num_threads", "1", "VAL.workers", "0",
            "DIR", out, *map(str, extra)]


def _fine_tune(work: str, out: str, seed: int, epochs: int, *extra) -> list[dict]:
    src = os.path.join(work, "source")
    T.main(load_cfg(None, _opts(os.path.join(work, "target_data"), 5, out,
                                "MODEL.weights_encoder", f"{src}/encoder_epoch_4.pth",
                                "MODEL.weights_decoder", f"{src}/decoder_epoch_4.pth",
                                "MODEL.reinit_classifier", True, "TRAIN.num_epoch", epochs,
                                "TRAIN.epoch_iters", 40, "TRAIN.eval_every", 1, "TRAIN.seed", seed,
                                "TRAIN.lr_encoder", 0.01, "TRAIN.lr_decoder", 0.01, *extra)), "cpu")
    return [r for r in read_metrics(out) if r["type"] == "epoch"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", default="/tmp/mit_semseg_bn_trap")
    parser.add_argument("--seeds", type=int, nargs="+", default=[304, 305])
    args = parser.parse_args()
    torch.set_num_threads(1)
    work = args.work
    if not os.path.isdir(os.path.join(work, "source_data")):
        make_synthetic_dataset(os.path.join(work, "source_data"), num_train=120, num_val=20,
                               size_range=(48, 96), num_class=8, seed=0)
    if not os.path.isdir(os.path.join(work, "target_data")):
        _shifted_dataset(os.path.join(work, "target_data"))
    src = os.path.join(work, "source")
    if not os.path.isfile(os.path.join(src, "encoder_epoch_4.pth")):
        T.main(load_cfg(None, _opts(os.path.join(work, "source_data"), 8, src,
                                    "TRAIN.num_epoch", 4, "TRAIN.epoch_iters", 75,
                                    "MODEL.bn_momentum", 0.1, "TRAIN.eval_every", 4)), "cpu")
    results = {}
    for seed in args.seeds:
        for k, (name, extra) in enumerate(VARIANTS.items()):
            epochs = _fine_tune(work, os.path.join(work, f"ft_{seed}_{k}"), seed, 2, *extra)
            results[f"{name}, seed {seed}"] = {"val_mean_iou": epochs[-1]["val_mean_iou"],
                                               "val_pixel_accuracy": epochs[-1]["val_pixel_accuracy"],
                                               "train_acc_last_epoch": epochs[-1]["acc"]}
    print(json.dumps(results, indent=1))
    curves_run = os.path.join(work, "curves")
    _fine_tune(work, curves_run, 304, 6, "TRAIN.precise_bn_iters", 20)
    plot_curves(read_metrics(curves_run), os.path.join(ROOT, "docs", "custom-dataset-curves.png"),
                "fine-tuning on a small dataset (TRAIN.eval_every 1, precise BN)")


if __name__ == "__main__":
    main()
