"""What a training run records besides checkpoints: the metrics file, optional
TensorBoard events, validation every ``TRAIN.eval_every`` epochs and the best
checkpoint.

``DIR/metrics.jsonl`` holds one JSON object per line:

* ``{"type": "iter", "epoch", "iter", "global_iter", "loss", "acc", "lr_encoder",
  "lr_decoder", "data_time", "compute_time", "iter_time"}`` after every
  iteration (``iter`` 1-based within the epoch, ``acc`` in 0..1, times in s);
* ``{"type": "epoch", "epoch", "global_iter", "loss", "acc", "iterations",
  "time"}`` at the end of every epoch (means over its iterations), with
  ``val_mean_iou``, ``val_pixel_accuracy``, ``val_mean_class_accuracy``,
  ``val_images``, ``val_time``, ``best_epoch`` and ``best_mean_iou`` when the
  epoch was validated.

A resumed run keeps the records up to its resume point and appends. With
validation, the checkpoint of the best mean IoU so far is copied to
``DIR/encoder_best.pth`` / ``DIR/decoder_best.pth`` and described in
``DIR/best.json`` (``{"epoch", "mean_iou", "pixel_accuracy", ...}``);
evaluate it with ``VAL.checkpoint best.pth``.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
from typing import Any

from yacs.config import CfgNode

from ..checkpoints.files import atomic_write_text, find_weights
from ..checkpoints.formats import twin_path
from ..config import ConfigError
from ..errors import InputNotFoundError
from .state import epoch_paths

__all__ = ["METRICS_FILE", "BEST_FILE", "TrainingMonitor", "read_metrics", "validation_sizes"]

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


def _tensorboard_writer(folder: str) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        raise ConfigError(f"TRAIN.tensorboard True needs the tensorboard package "
                          f"(pip install tensorboard): {exc}") from None
    return SummaryWriter(log_dir=folder)


class TrainingMonitor:
    """Metrics file, TensorBoard and best-checkpoint bookkeeping of one run.

    Every rank makes one; only ``is_main`` writes. ``resume_iter``: the global
    iteration the run continues from (None: a new run, the metrics file starts
    empty; else records after that iteration are dropped).
    """

    def __init__(self, cfg: CfgNode, is_main: bool, resume_iter: int | None) -> None:
        self.cfg = cfg
        self.is_main = is_main
        self.eval_every = int(cfg.TRAIN.eval_every)
        self.best: dict | None = None
        self._sums = self._fresh()
        self._fh = None
        self._tb = None
        if not is_main:
            return
        path = os.path.join(cfg.DIR, METRICS_FILE)
        kept = []
        if resume_iter is not None and os.path.isfile(path):
            kept = [r for r in read_metrics(path) if int(r.get("global_iter", 0)) <= resume_iter]
            best_path = os.path.join(cfg.DIR, BEST_FILE)
            if os.path.isfile(best_path):
                with open(best_path, encoding="utf-8") as fh:
                    self.best = json.load(fh)
        atomic_write_text("".join(json.dumps(r) + "\n" for r in kept), path)
        self._fh = open(path, "a", encoding="utf-8")
        if cfg.TRAIN.tensorboard:
            self._tb = _tensorboard_writer(os.path.join(cfg.DIR, "tensorboard"))

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

    def end_epoch(self, epoch: int, global_iter: int, val: dict | None = None) -> None:
        """Write the epoch record; with validation results ``val`` (a
        ``SegmentationMetrics.summary`` dict plus ``time``), update the best checkpoint."""
        s = self._sums
        record: dict[str, Any] = {"type": "epoch", "epoch": epoch, "global_iter": global_iter,
                                  "iterations": s["n"], "time": s["time"]}
        if s["n"]:
            record.update(loss=s["loss"] / s["n"], acc=s["acc"] / s["n"])
        self._sums = self._fresh()
        if val is not None:
            record.update(val_mean_iou=val["mean_iou"], val_pixel_accuracy=val["pixel_accuracy"],
                          val_mean_class_accuracy=val["mean_class_accuracy"],
                          val_images=val["num_images"], val_time=val["time"])
            if self.is_main:
                self._update_best(epoch, val)
            if self.best is not None:
                record.update(best_epoch=self.best["epoch"], best_mean_iou=self.best["mean_iou"])
            logger.info("Validation after epoch %d: mean IoU %.4f, accuracy %.2f%% (%d images, "
                        "%.1f s); best: epoch %s, mean IoU %.4f", epoch, val["mean_iou"],
                        val["pixel_accuracy"] * 100, val["num_images"], val["time"],
                        record.get("best_epoch"), record.get("best_mean_iou", float("nan")))
            if self._tb is not None:
                self._tb.add_scalar("val/mean_iou", val["mean_iou"], global_iter)
                self._tb.add_scalar("val/pixel_accuracy", val["pixel_accuracy"], global_iter)
        if self.is_main:
            self._write(record)
            if self._tb is not None:
                if s["n"]:
                    self._tb.add_scalar("epoch/loss", record["loss"], global_iter)
                self._tb.flush()

    def _update_best(self, epoch: int, val: dict) -> None:
        if self.best is not None and val["mean_iou"] <= self.best["mean_iou"]:
            return
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
        self.best = {"epoch": epoch, "mean_iou": val["mean_iou"],
                     "pixel_accuracy": val["pixel_accuracy"],
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
