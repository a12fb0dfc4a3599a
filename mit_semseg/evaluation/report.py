"""What an evaluation reports: the per-class table and summary lines on the
console (the original's ``Mean IoU: 0.xxxx, Accuracy: xx.xx%`` included) and
every number as JSON in ``DIR/eval_<checkpoint>.json``."""
from __future__ import annotations

import json
import os
from typing import Any, TextIO

import numpy as np
from yacs.config import CfgNode

from ..data.classes import class_names
from .metrics import SegmentationMetrics

__all__ = ["results_path", "write_report"]


def results_path(cfg: CfgNode) -> str:
    """``DIR/eval_<checkpoint without .pth>.json``."""
    stem = os.path.splitext(os.path.basename(cfg.VAL.checkpoint))[0]
    return os.path.join(cfg.DIR, f"eval_{stem}.json")


def write_report(metrics: SegmentationMetrics, cfg: CfgNode, seconds: float | None,
                 stream: TextIO) -> dict[str, Any]:
    """Print the per-class table and summary to ``stream``, write the JSON next to
    the checkpoint (``results_path``); return the record written."""
    names = class_names(cfg)
    summary = metrics.summary(names)
    width = max(len(n) for n in names.values())
    for row in summary["per_class"]:
        acc = "   n/a" if row["accuracy"] is None else f"{row['accuracy'] * 100:6.2f}%"
        print(f"class [{row['index']}] {row['name']:<{width}}  IoU: {row['iou']:.4f}  "
              f"Acc: {acc}", file=stream)
    print("[Eval Summary]:", file=stream)
    line = f"Mean IoU: {metrics.mean_iou:.4f}, Accuracy: {metrics.pixel_accuracy * 100:.2f}%"
    if seconds is not None:
        line += f", Inference Time: {seconds / max(metrics.num_images, 1):.4f}s"
    print(line, file=stream)
    print(f"Mean class accuracy: {metrics.mean_class_accuracy * 100:.2f}%, "
          f"Frequency-weighted IoU: {metrics.frequency_weighted_iou:.4f}", file=stream)
    enc, dec = (os.path.join(cfg.DIR, f"{part}_{cfg.VAL.checkpoint}") for part in ("encoder", "decoder"))
    record = {"checkpoint": cfg.VAL.checkpoint, "encoder": enc, "decoder": dec,
              "list_val": cfg.DATASET.list_val,
              "imgSizes": np.atleast_1d(cfg.DATASET.imgSizes).tolist(),
              "flip": bool(cfg.VAL.flip), "precision": cfg.VAL.precision,
              "backend": cfg.VAL.backend, "mode": cfg.VAL.mode, **summary}
    if seconds is not None:
        record["inference_time_per_image_s"] = seconds / max(metrics.num_images, 1)
    path = results_path(cfg)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(record, fh, indent=2)
    os.replace(tmp, path)
    print(f"Results written to {path}", file=stream)
    return record
