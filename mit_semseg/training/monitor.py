"""What a training run records besides checkpoints, and the helpers its hooks
share: the metrics file (written by ``hooks.metrics``, with optional TensorBoard
events), validation every ``TRAIN.eval_every`` epochs and the best checkpoint by
``TRAIN.best_metric`` (``hooks.validation``), early stopping (``TRAIN.early_stop``,
``hooks.early_stop``).

``DIR/metrics.jsonl`` holds one JSON object per line:

* ``{"type": "iter", "epoch", "iter", "global_iter", "loss", "acc", "lr_encoder",
  "lr_decoder", "data_time", "compute_time", "iter_time"}`` after every
  iteration (``iter`` 1-based within the epoch, ``acc`` in 0..1, times in s);
* ``{"type": "epoch", "epoch", "global_iter", "loss", "acc", "iterations",
  "time"}`` at the end of every epoch (means over its iterations), and when the
  epoch was validated: ``val_mean_iou``, ``val_pixel_accuracy``,
  ``val_mean_class_accuracy``, ``val_frequency_weighted_iou``, ``val_mean_f1``,
  ``val_overall_score``, ``val_class_iou`` (class name -> IoU, in class order; a
  name that occurs twice gets `` [k]`` appended), ``val_images``, ``val_time``,
  ``best_metric`` (the ``TRAIN.best_metric`` setting), ``val_score`` (its
  value this epoch), ``best_epoch``, ``best_score``, ``best_mean_iou`` (mean
  IoU of the best epoch), ``val_since_best`` (validations since the best one)
  and, on the epoch that ended the run early, ``stopped_early: true``.

A resumed run keeps the records up to its resume point and appends. With
validation, the checkpoint of the best ``TRAIN.best_metric`` so far is copied
to ``DIR/encoder_best.pth`` / ``DIR/decoder_best.pth`` and described in
``DIR/best.json`` (``{"epoch", "metric", "score", "mean_iou", "pixel_accuracy",
"frequency_weighted_iou", ...}``); evaluate it with ``VAL.checkpoint best.pth``.
"""
from __future__ import annotations

import difflib
import json
import os
from dataclasses import dataclass
from typing import Any, Sequence

from yacs.config import CfgNode

from ..config import ConfigError
from ..errors import InputNotFoundError

__all__ = ["METRICS_FILE", "BEST_FILE", "SUMMARY_METRICS", "BestMetric", "parse_best_metric",
           "class_iou_keys", "read_metrics", "validation_sizes", "validation_due", "val_fields"]

METRICS_FILE = "metrics.jsonl"
BEST_FILE = "best.json"


def read_metrics(path: str) -> list[dict]:
    """Records of a metrics file (a run folder or the file itself); a torn last
    line (a run killed mid-write) is skipped."""
    if os.path.isdir(path):
        path = os.path.join(path, METRICS_FILE)
    if not os.path.isfile(path):
        raise InputNotFoundError(f"metrics file not found: {path} (written by train.py into DIR)")
    out = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out


def validation_sizes(cfg: CfgNode) -> tuple[int, ...]:
    """Short sides used for validation during training: ``TRAIN.eval_imgSizes``, or
    the middle entry of ``DATASET.imgSizes`` (one scale)."""
    if len(cfg.TRAIN.eval_imgSizes):
        return tuple(int(s) for s in cfg.TRAIN.eval_imgSizes)
    sizes = cfg.DATASET.imgSizes
    sizes = tuple(sizes) if isinstance(sizes, (list, tuple)) else (sizes,)
    return (int(sizes[len(sizes) // 2]),)


# validation results TRAIN.best_metric may name (keys of SegmentationMetrics.summary)
SUMMARY_METRICS = ("mean_iou", "pixel_accuracy", "mean_class_accuracy", "frequency_weighted_iou",
                   "mean_f1", "overall_score")
_LABELS = {"mean_iou": "mean IoU", "pixel_accuracy": "pixel accuracy",
           "mean_class_accuracy": "mean class accuracy",
           "frequency_weighted_iou": "frequency-weighted IoU", "mean_f1": "mean F1",
           "overall_score": "overall score"}
_NAMES_SHOWN = 40


def class_iou_keys(names: Sequence[str]) -> list[str]:
    """The keys of ``val_class_iou``: the class names, with `` [k]`` appended to a
    name that more than one class has (ADE20K has two "screen" classes)."""
    counts: dict[str, int] = {}
    for name in names:
        counts[name] = counts.get(name, 0) + 1
    return [name if counts[name] == 1 else f"{name} [{k}]" for k, name in enumerate(names)]


@dataclass(frozen=True)
class BestMetric:
    """A parsed ``TRAIN.best_metric``: a summary metric (``key``) or the IoU of
    class ``class_index`` (``key`` "iou"), read from an epoch record."""

    spec: str
    key: str
    class_index: int | None = None
    class_key: str = ""

    @property
    def label(self) -> str:
        """How the log names it, e.g. "mean IoU" or "IoU of car"."""
        return f"IoU of {self.class_key}" if self.class_index is not None else _LABELS[self.key]

    def score(self, record: dict) -> float | None:
        """Its value in a validated epoch record (None when the record lacks it)."""
        if self.class_index is None:
            value = record.get(f"val_{self.key}")
        else:
            value = (record.get("val_class_iou") or {}).get(self.class_key)
        return None if value is None else float(value)


def _choices(names: Sequence[str]) -> str:
    shown = ", ".join(names[:_NAMES_SHOWN])
    more = f" ... ({len(names)} classes, see the class table)" if len(names) > _NAMES_SHOWN else ""
    return f"{', '.join(SUMMARY_METRICS)}, or iou:NAME / iou:K for one class (class names: " \
           f"{shown}{more})"


def parse_best_metric(spec: str, names: Sequence[str]) -> BestMetric:
    """``TRAIN.best_metric`` for classes ``names`` (0-based order); ConfigError
    listing the valid choices and class names when it names neither."""
    text = str(spec).strip()
    if text.lower() in SUMMARY_METRICS:
        return BestMetric(text, text.lower())
    keys = class_iou_keys(names)
    if text.lower().startswith("iou:"):
        wanted = text[4:].strip()
        if wanted.isdigit():
            k = int(wanted)
            if k < len(names):
                return BestMetric(text, "iou", k, keys[k])
            raise ConfigError(f"TRAIN.best_metric '{text}': class index {k} is out of range "
                              f"(0..{len(names) - 1})")
        found = [k for k, name in enumerate(names) if name.lower() == wanted.lower()]
        found = found or [k for k, key in enumerate(keys) if key.lower() == wanted.lower()]
        if len(found) == 1:
            return BestMetric(text, "iou", found[0], keys[found[0]])
        if found:
            raise ConfigError(f"TRAIN.best_metric '{text}': {len(found)} classes are named "
                              f"'{wanted}'; use " + " or ".join(f"iou:{k}" for k in found))
        close = difflib.get_close_matches(wanted, list(names), n=3, cutoff=0.6)
        hint = f" (did you mean {' or '.join('iou:' + c for c in close)}?)" if close else ""
        raise ConfigError(f"TRAIN.best_metric '{text}': no class named '{wanted}'{hint}; "
                          f"choose {_choices(list(names))}")
    raise ConfigError(f"TRAIN.best_metric '{text}' is not a validation metric; choose "
                      f"{_choices(list(names))}")


def val_fields(val: dict) -> dict[str, Any]:
    """The ``val_*`` fields of an epoch record from a ``validate`` result."""
    fields = {f"val_{key}": val.get(key) for key in SUMMARY_METRICS}
    per_class = val.get("per_class") or []
    keys = class_iou_keys([c["name"] for c in per_class])
    fields["val_class_iou"] = {key: c["iou"] for key, c in zip(keys, per_class)}
    fields.update(val_images=val["num_images"], val_time=val["time"])
    return fields


def validation_due(cfg: CfgNode, epoch: int) -> bool:
    """Whether ``epoch`` is validated: every ``TRAIN.eval_every`` epochs and the last one."""
    every = int(cfg.TRAIN.eval_every)
    return every > 0 and (epoch % every == 0 or epoch == int(cfg.TRAIN.num_epoch))
