"""What an evaluation reports: the per-class table and summary lines on the
console (the original's ``Mean IoU: 0.xxxx, Accuracy: xx.xx%`` included), every
number as JSON in ``DIR/eval_<checkpoint>.json`` and the report page
``DIR/eval_<checkpoint>.html`` (``html_report``) showing them.

The JSON holds every number the page shows: ``SegmentationMetrics.summary``
(the confusion counts included), ``top_confusions``, ``per_image_histogram``
and ``worst_images`` (the images shown, worst first). Lists of rows (per class,
per image, the confusion matrix) are written one row per line.
"""
from __future__ import annotations

import json
import os
from typing import Any, Mapping, Sequence, TextIO

import numpy as np
from yacs.config import CfgNode

from .html_report import report_numbers, write_html_report
from .metrics import SegmentationMetrics

__all__ = ["results_path", "report_path", "write_report", "dump_json"]


def results_path(cfg: CfgNode) -> str:
    """``DIR/eval_<checkpoint without .pth>.json``."""
    stem = os.path.splitext(os.path.basename(cfg.VAL.checkpoint))[0]
    return os.path.join(cfg.DIR, f"eval_{stem}.json")


def report_path(cfg: CfgNode) -> str:
    """``DIR/eval_<checkpoint without .pth>.html``, beside ``results_path``."""
    return os.path.splitext(results_path(cfg))[0] + ".html"


def dump_json(record: Mapping[str, Any]) -> str:
    """``record`` as strict JSON text: one top-level key per line, and a list of
    lists or objects (rows) with one compact row per line."""
    def compact(value: Any) -> str:
        return json.dumps(value, separators=(",", ":"), allow_nan=False)

    lines = []
    for key, value in record.items():
        if isinstance(value, list) and value and all(isinstance(v, (list, dict)) for v in value):
            rows = ",\n".join("    " + compact(v) for v in value)
            lines.append(f"  {json.dumps(key)}: [\n{rows}\n  ]")
        else:
            lines.append(f"  {json.dumps(key)}: {json.dumps(value, allow_nan=False)}")
    return "{\n" + ",\n".join(lines) + "\n}\n"


def _write_atomic(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)


def write_report(metrics: SegmentationMetrics, cfg: CfgNode, seconds: float | None,
                 stream: TextIO, *, names: Mapping[int, str],
                 panels: Sequence[Any] | None = None, html: bool = True,
                 ran: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Print the per-class table and summary to ``stream``, write the JSON next to
    the checkpoint (``results_path``) and, with ``html``, the report page
    (``report_path``) with ``panels`` (``WorstPanels.panels()``, worst first) as
    its worst images; ``names``: the class names (index -> name); return the
    record written. ``ran``: the ``backend`` and ``precision`` the engine measured
    with (default: the VAL keys' values)."""
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
    line = f"Mean Dice/F1: {metrics.mean_f1:.4f}, Overall score: {metrics.overall_score:.4f}"
    if metrics.mean_boundary_iou is not None:
        line += f", Mean boundary IoU: {metrics.mean_boundary_iou:.4f}"
    print(line, file=stream)
    enc, dec = (os.path.join(cfg.DIR, f"{part}_{cfg.VAL.checkpoint}") for part in ("encoder", "decoder"))
    record = {"checkpoint": cfg.VAL.checkpoint, "encoder": enc, "decoder": dec,
              "list_val": cfg.DATASET.list_val,
              "imgSizes": np.atleast_1d(cfg.DATASET.imgSizes).tolist(),
              "flip": bool(cfg.VAL.flip), "precision": cfg.VAL.precision,
              "backend": cfg.VAL.backend, "mode": cfg.VAL.mode, **(ran or {}), **summary}
    if seconds is not None:
        record["inference_time_per_image_s"] = seconds / max(metrics.num_images, 1)
    record.update(report_numbers(record))
    by_name = {r["name"]: r for r in summary["per_image"] or []}
    record["worst_images"] = [
        {"name": name, "mean_iou": by_name.get(name, {}).get("mean_iou"),
         "pixel_accuracy": by_name.get(name, {}).get("pixel_accuracy")}
        for name, *_ in panels or []]
    path = results_path(cfg)
    _write_atomic(path, dump_json(record))
    print(f"Results written to {path}", file=stream)
    if html:
        page = write_html_report(record, report_path(cfg), panels=panels)
        print(f"Report written to {page}", file=stream)
    return record
