"""The metrics hook: ``DIR/metrics.jsonl`` (a record per iteration and per epoch,
see :mod:`mit_semseg.training.monitor`) and, with ``TRAIN.tensorboard``, the same
numbers as TensorBoard events in ``DIR/tensorboard``. Rank 0 writes; a resumed run
keeps the records up to its resume point and appends."""
from __future__ import annotations

import json
import os
from typing import Any

from yacs.config import CfgNode

from ...checkpoints.files import atomic_write_text
from ...config import ConfigError
from ..monitor import METRICS_FILE, SUMMARY_METRICS, read_metrics
from ..trainer import HookBase, Trainer

__all__ = ["MetricsHook"]


def _tensorboard_writer(folder: str) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        raise ConfigError(f"TRAIN.tensorboard True needs the tensorboard package "
                          f"(pip install tensorboard): {exc}") from None
    return SummaryWriter(log_dir=folder)


class MetricsHook(HookBase):
    """Writes the iteration records after every step and the epoch record (with what
    the other epoch-end hooks put in ``trainer.record``) last at the end of an
    epoch."""

    priority = 90

    def __init__(self, cfg: CfgNode) -> None:
        self.cfg = cfg
        self._sums = self._fresh()
        self._fh: Any = None
        self._tb: Any = None

    @staticmethod
    def _fresh() -> dict[str, float]:
        return {"loss": 0.0, "acc": 0.0, "n": 0, "time": 0.0}

    def before_train(self, trainer: Trainer) -> None:
        if not trainer.env.is_main:
            return
        path = os.path.join(self.cfg.DIR, METRICS_FILE)
        kept = []
        if trainer.point is not None and os.path.isfile(path):
            kept = [r for r in read_metrics(path)
                    if int(r.get("global_iter", 0)) <= trainer.global_iter]
        atomic_write_text("".join(json.dumps(r) + "\n" for r in kept), path)
        self._fh = open(path, "a", encoding="utf-8")
        if self.cfg.TRAIN.tensorboard:
            self._tb = _tensorboard_writer(os.path.join(self.cfg.DIR, "tensorboard"))

    def _write(self, record: dict) -> None:
        if self._fh is not None:
            self._fh.write(json.dumps(record) + "\n")
            self._fh.flush()

    def after_step(self, trainer: Trainer) -> None:
        step, s = trainer.step, self._sums
        s["loss"] += step.loss
        s["acc"] += step.acc
        s["n"] += 1
        s["time"] += step.iter_time
        if not trainer.env.is_main:
            return
        lrs = tuple(step.lrs)
        record = {"type": "iter", "epoch": trainer.epoch, "iter": trainer.iter + 1,
                  "global_iter": trainer.global_iter, "loss": step.loss, "acc": step.acc}
        if len(lrs) == 2:
            record.update(lr_encoder=lrs[0], lr_decoder=lrs[1])
        else:
            record["lr"] = list(lrs)
        record.update(data_time=step.data_time,
                      compute_time=max(0.0, step.iter_time - step.data_time),
                      iter_time=step.iter_time)
        self._write(record)
        if self._tb is not None:
            g = trainer.global_iter
            self._tb.add_scalar("train/loss", step.loss, g)
            self._tb.add_scalar("train/accuracy", step.acc, g)
            for name, lr in zip(("encoder", "decoder") if len(lrs) == 2 else
                                [str(k) for k in range(len(lrs))], lrs):
                self._tb.add_scalar(f"lr/{name}", lr, g)

    def after_epoch(self, trainer: Trainer) -> None:
        s = self._sums
        record: dict[str, Any] = {"type": "epoch", "epoch": trainer.epoch,
                                  "global_iter": trainer.global_iter, "iterations": s["n"],
                                  "time": s["time"]}
        if s["n"]:
            record.update(loss=s["loss"] / s["n"], acc=s["acc"] / s["n"])
        record.update(trainer.record)
        trainer.record = record
        self._sums = self._fresh()
        if not trainer.env.is_main:
            return
        self._write(record)
        if self._tb is not None:
            self._tensorboard_validation(trainer, record)
            if s["n"]:
                self._tb.add_scalar("epoch/loss", record["loss"], trainer.global_iter)
            self._tb.flush()

    def _tensorboard_validation(self, trainer: Trainer, record: dict) -> None:
        if "val_mean_iou" not in record:
            return
        g = trainer.global_iter
        for key in SUMMARY_METRICS:
            if record.get(f"val_{key}") is not None:
                self._tb.add_scalar(f"val/{key}", record[f"val_{key}"], g)
        metric = trainer.storage.get("best_metric")
        if metric is not None and metric.class_index is not None \
                and record.get("val_score") is not None:
            self._tb.add_scalar(f"val/{metric.spec}", record["val_score"], g)
        for name, iou in record["val_class_iou"].items():
            self._tb.add_scalar(f"val_class_iou/{name}", iou, g)

    def after_train(self, trainer: Trainer) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
