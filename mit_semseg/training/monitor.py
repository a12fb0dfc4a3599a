"""What a training run records besides checkpoints: the metrics file, optional
TensorBoard events, validation every ``TRAIN.eval_every`` epochs, the best
checkpoint by ``TRAIN.best_metric`` and early stopping (``TRAIN.early_stop``).

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
import logging
import os
import shutil
import time
from dataclasses import dataclass
from typing import Any, Sequence

from yacs.config import CfgNode

from ..checkpoints.files import atomic_write_text, find_weights
from ..checkpoints.formats import twin_path
from ..config import ConfigError
from ..data.classes import class_names
from ..errors import InputNotFoundError
from .state import epoch_paths

__all__ = ["METRICS_FILE", "BEST_FILE", "SUMMARY_METRICS", "BestMetric", "parse_best_metric",
           "class_iou_keys", "TrainingMonitor", "read_metrics", "validation_sizes"]

METRICS_FILE = "metrics.jsonl"
BEST_FILE = "best.json"

logger = logging.getLogger("Logger")


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


def _val_fields(val: dict) -> dict[str, Any]:
    """The ``val_*`` fields of an epoch record from a ``validate`` result."""
    fields = {f"val_{key}": val.get(key) for key in SUMMARY_METRICS}
    per_class = val.get("per_class") or []
    keys = class_iou_keys([c["name"] for c in per_class])
    fields["val_class_iou"] = {key: c["iou"] for key, c in zip(keys, per_class)}
    fields.update(val_images=val["num_images"], val_time=val["time"])
    return fields


def _tensorboard_writer(folder: str) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        raise ConfigError(f"TRAIN.tensorboard True needs the tensorboard package "
                          f"(pip install tensorboard): {exc}") from None
    return SummaryWriter(log_dir=folder)


class TrainingMonitor:
    """Metrics file, TensorBoard, best-checkpoint and early-stopping bookkeeping of
    one run.

    Every rank makes one; only ``is_main`` writes and decides. ``resume_iter``:
    the global iteration the run continues from (None: a new run, the metrics
    file starts empty; else records after that iteration are dropped and the
    best epoch and the validations since it are taken from the records kept).
    """

    def __init__(self, cfg: CfgNode, is_main: bool, resume_iter: int | None) -> None:
        self.cfg = cfg
        self.is_main = is_main
        self.eval_every = int(cfg.TRAIN.eval_every)
        self.patience = int(cfg.TRAIN.early_stop)
        names = class_names(cfg)
        self.metric = parse_best_metric(cfg.TRAIN.best_metric,
                                        [names[k] for k in range(len(names))])
        self.best: dict | None = None
        self.since_best = 0  # validations since the best one
        self._sums = self._fresh()
        self._fh = None
        self._tb = None
        if not is_main:
            return
        path = os.path.join(cfg.DIR, METRICS_FILE)
        kept = []
        if resume_iter is not None and os.path.isfile(path):
            kept = [r for r in read_metrics(path) if int(r.get("global_iter", 0)) <= resume_iter]
            self._resume_best(kept)
        atomic_write_text("".join(json.dumps(r) + "\n" for r in kept), path)
        self._fh = open(path, "a", encoding="utf-8")
        if cfg.TRAIN.tensorboard:
            self._tb = _tensorboard_writer(os.path.join(cfg.DIR, "tensorboard"))

    def _resume_best(self, kept: list[dict]) -> None:
        """The best epoch and the validations since it, up to the resume point: from
        the kept epoch records when they hold the metric, else from best.json."""
        validated = [r for r in kept if r.get("type") == "epoch" and "val_mean_iou" in r]
        saved = None
        best_path = os.path.join(self.cfg.DIR, BEST_FILE)
        if os.path.isfile(best_path):
            with open(best_path, encoding="utf-8") as fh:
                saved = json.load(fh)
            saved.setdefault("metric", "mean_iou")  # files of earlier versions
            if "score" not in saved and saved["metric"] == "mean_iou":
                saved["score"] = saved.get("mean_iou")
        scores = [self.metric.score(r) for r in validated]
        if validated and all(v is not None for v in scores):
            top = max(range(len(validated)), key=lambda i: (scores[i], -i))  # first of equals
            record = validated[top]
            paths = epoch_paths(self.cfg.DIR, record["epoch"])
            if saved is not None and saved.get("epoch") == record["epoch"] \
                    and saved["metric"] == self.metric.spec:
                self.best = saved
            elif os.path.isfile(paths["encoder"]) and os.path.isfile(paths["decoder"]):
                self._save_best(record["epoch"], record)
            else:
                logger.warning("the best epoch so far by %s, %d, has no checkpoint files in %s "
                               "any more: the next validation starts the best anew",
                               self.metric.spec, record["epoch"], self.cfg.DIR)
                return
            self.since_best = len(validated) - 1 - top
        elif saved is not None and saved["metric"] == self.metric.spec:
            self.best = saved
            self.since_best = sum(1 for r in validated if r["epoch"] > saved["epoch"])
        elif saved is not None:
            logger.warning("%s was chosen by %s, this run uses TRAIN.best_metric %s and the "
                           "metrics file lacks it: the next validation starts the best anew",
                           best_path, saved["metric"], self.metric.spec)

    @property
    def should_stop(self) -> bool:
        """Whether ``TRAIN.early_stop`` validations in a row brought no better
        ``TRAIN.best_metric`` (meaningful on the main rank)."""
        return self.patience > 0 and self.best is not None and self.since_best >= self.patience

    @staticmethod
    def _fresh() -> dict[str, float]:
        return {"loss": 0.0, "acc": 0.0, "n": 0, "time": 0.0}

    def _write(self, record: dict) -> None:
        if self._fh is not None:
            self._fh.write(json.dumps(record) + "\n")
            self._fh.flush()

    def iteration(self, epoch: int, i: int, global_iter: int, loss: float, acc: float,
                  lrs: tuple[float, float], data_time: float, iter_time: float) -> None:
        """Record iteration ``i`` (0-based) of ``epoch``, ending at ``global_iter``."""
        s = self._sums
        s["loss"] += loss
        s["acc"] += acc
        s["n"] += 1
        s["time"] += iter_time
        if not self.is_main:
            return
        self._write({"type": "iter", "epoch": epoch, "iter": i + 1, "global_iter": global_iter,
                     "loss": loss, "acc": acc, "lr_encoder": lrs[0], "lr_decoder": lrs[1],
                     "data_time": data_time, "compute_time": max(0.0, iter_time - data_time),
                     "iter_time": iter_time})
        if self._tb is not None:
            self._tb.add_scalar("train/loss", loss, global_iter)
            self._tb.add_scalar("train/accuracy", acc, global_iter)
            self._tb.add_scalar("lr/encoder", lrs[0], global_iter)
            self._tb.add_scalar("lr/decoder", lrs[1], global_iter)

    def validation_due(self, epoch: int) -> bool:
        """Whether ``epoch`` is validated: every ``eval_every`` epochs and the last one."""
        return self.eval_every > 0 and (epoch % self.eval_every == 0
                                        or epoch == int(self.cfg.TRAIN.num_epoch))

    def end_epoch(self, epoch: int, global_iter: int, val: dict | None = None) -> dict:
        """Write the epoch record and return it; with validation results ``val`` (a
        ``SegmentationMetrics.summary`` dict plus ``time``), update the best
        checkpoint and the count of validations since it first."""
        s = self._sums
        record: dict[str, Any] = {"type": "epoch", "epoch": epoch, "global_iter": global_iter,
                                  "iterations": s["n"], "time": s["time"]}
        if s["n"]:
            record.update(loss=s["loss"] / s["n"], acc=s["acc"] / s["n"])
        self._sums = self._fresh()
        if val is not None:
            record.update(_val_fields(val))
            record["best_metric"] = self.metric.spec
            record["val_score"] = self.metric.score(record)
            if self.is_main:
                self._update_best(epoch, record)
            if self.best is not None:
                record.update(best_epoch=self.best["epoch"], best_score=self.best["score"],
                              best_mean_iou=self.best["mean_iou"], val_since_best=self.since_best)
                if self.should_stop:
                    record["stopped_early"] = True
            self._log_validation(epoch, record)
            self._tensorboard_validation(record, global_iter)
        if self.is_main:
            self._write(record)
            if self._tb is not None:
                if s["n"]:
                    self._tb.add_scalar("epoch/loss", record["loss"], global_iter)
                self._tb.flush()
        return record

    def _log_validation(self, epoch: int, record: dict) -> None:
        lowest = sorted(record["val_class_iou"].items(), key=lambda kv: kv[1])[:3]
        line = (f"Validation after epoch {epoch}: mean IoU {record['val_mean_iou']:.4f}, "
                f"accuracy {record['val_pixel_accuracy'] * 100:.2f}% ({record['val_images']} "
                f"images, {record['val_time']:.1f} s)")
        if self.metric.key != "mean_iou":
            line += f", {self.metric.label} {record['val_score']:.4f}"
        if lowest:
            line += "; lowest IoU: " + ", ".join(f"{k} {v:.2f}" for k, v in lowest)
        if self.best is not None:
            line += (f"; best: epoch {self.best['epoch']}, {self.metric.label} "
                     f"{self.best['score']:.4f}")
            if self.patience > 0:
                line += f" (no improvement for {self.since_best} of {self.patience} validations)"
        logger.info("%s", line)

    def _tensorboard_validation(self, record: dict, global_iter: int) -> None:
        if self._tb is None:
            return
        for key in SUMMARY_METRICS:
            if record.get(f"val_{key}") is not None:
                self._tb.add_scalar(f"val/{key}", record[f"val_{key}"], global_iter)
        if self.metric.class_index is not None and record["val_score"] is not None:
            self._tb.add_scalar(f"val/{self.metric.spec}", record["val_score"], global_iter)
        for name, iou in record["val_class_iou"].items():
            self._tb.add_scalar(f"val_class_iou/{name}", iou, global_iter)

    def _update_best(self, epoch: int, record: dict) -> None:
        score = record["val_score"]
        if self.best is not None and not score > self.best["score"]:
            self.since_best += 1
            return
        self.since_best = 0
        self._save_best(epoch, record)

    def _save_best(self, epoch: int, record: dict) -> None:
        """Copy the epoch-``epoch`` checkpoint to ``*_best.pth`` and write best.json."""
        paths = epoch_paths(self.cfg.DIR, epoch)
        sources = {kind: find_weights(paths[kind]) or paths[kind]
                   for kind in ("encoder", "decoder")}
        for kind, src in sources.items():
            suffix = os.path.splitext(src)[1]  # .pth, or .safetensors (TRAIN.save_format)
            dst = os.path.join(self.cfg.DIR, f"{kind}_best{suffix}")
            # a name remove_stale_temporaries cleans up after a crash
            tmp = os.path.join(self.cfg.DIR, f".{kind}_best{suffix}.copy.tmp")
            shutil.copyfile(src, tmp)
            os.replace(tmp, dst)
            if os.path.isfile(twin_path(dst)):  # the other format's, from an earlier best
                os.unlink(twin_path(dst))
        self.best = {"epoch": epoch, "metric": self.metric.spec,
                     "score": self.metric.score(record),
                     "mean_iou": record["val_mean_iou"],
                     "pixel_accuracy": record["val_pixel_accuracy"],
                     "frequency_weighted_iou": record.get("val_frequency_weighted_iou"),
                     "encoder": os.path.basename(sources["encoder"]),
                     "decoder": os.path.basename(sources["decoder"]),
                     "imgSizes": list(validation_sizes(self.cfg)), "time": time.time()}
        atomic_write_text(json.dumps(self.best, indent=2) + "\n",
                          os.path.join(self.cfg.DIR, BEST_FILE))

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
