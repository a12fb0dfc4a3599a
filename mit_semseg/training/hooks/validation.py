"""The validation hook: validate every ``TRAIN.eval_every`` epochs (and after the
last one) on rank 0, keep the checkpoint of the best ``TRAIN.best_metric`` as
``DIR/encoder_best.pth`` / ``decoder_best.pth`` with ``DIR/best.json``, and log
the result. With ``TRAIN.ema_decay`` the moving average is validated and kept
(``trainer.storage["eval_network"]``, ``*_ema_epoch_N`` files). The epoch record
gets the ``val_*`` and ``best_*`` fields (see :mod:`mit_semseg.training.monitor`)."""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
from typing import Any

from yacs.config import CfgNode

from ...checkpoints.files import atomic_write_text, find_weights
from ...checkpoints.formats import twin_path
from ...data.classes import class_names
from ...evaluation import validate
from .. import distributed as D
from ..monitor import (BEST_FILE, METRICS_FILE, BestMetric, parse_best_metric, read_metrics,
                       val_fields, validation_due, validation_sizes)
from ..state import epoch_paths
from ..trainer import HookBase, Trainer
from .ema import ema_epoch_paths

__all__ = ["ValidationHook", "BestCheckpoint"]

logger = logging.getLogger("Logger")


class BestCheckpoint:
    """The best validated epoch of a run folder by one metric: ``best`` (best.json's
    record, None before the first validation) and ``since_best`` (validations since).
    Only the main rank's copy writes files."""

    def __init__(self, folder: str, metric: BestMetric, sizes: tuple[int, ...],
                 is_main: bool = True, ema: bool = False) -> None:
        self.folder, self.metric, self.sizes, self.is_main = folder, metric, sizes, is_main
        self.ema = ema  # the validated weights are the EMA's {encoder,decoder}_ema_epoch_N
        self.best: dict | None = None
        self.since_best = 0

    def _paths(self, epoch: int) -> dict[str, str]:
        return ema_epoch_paths(self.folder, epoch) if self.ema else \
            epoch_paths(self.folder, epoch)

    def update(self, epoch: int, record: dict) -> None:
        """Count a validation of ``epoch`` (its record holds the ``val_*`` fields)."""
        score = record["val_score"]
        if self.best is not None and not score > self.best["score"]:
            self.since_best += 1
            return
        self.since_best = 0
        self.save(epoch, record)

    def save(self, epoch: int, record: dict) -> None:
        """Copy the epoch-``epoch`` checkpoint to ``*_best.*`` and write best.json."""
        paths = self._paths(epoch)
        sources = {kind: find_weights(paths[kind]) or paths[kind]
                   for kind in ("encoder", "decoder")}
        for kind, src in sources.items():
            suffix = os.path.splitext(src)[1]  # .pth, or .safetensors (TRAIN.save_format)
            dst = os.path.join(self.folder, f"{kind}_best{suffix}")
            # a name remove_stale_temporaries cleans up after a crash
            tmp = os.path.join(self.folder, f".{kind}_best{suffix}.copy.tmp")
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
                     "imgSizes": list(self.sizes), "time": time.time()}
        atomic_write_text(json.dumps(self.best, indent=2) + "\n",
                          os.path.join(self.folder, BEST_FILE))

    def resume(self, kept: list[dict]) -> None:
        """The best epoch and the validations since it, up to the resume point: from
        the kept epoch records when they hold the metric, else from best.json."""
        validated = [r for r in kept if r.get("type") == "epoch" and "val_mean_iou" in r]
        saved = None
        best_path = os.path.join(self.folder, BEST_FILE)
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
            paths = self._paths(record["epoch"])
            if saved is not None and saved.get("epoch") == record["epoch"] \
                    and saved["metric"] == self.metric.spec:
                self.best = saved
            elif os.path.isfile(paths["encoder"]) and os.path.isfile(paths["decoder"]):
                self.save(record["epoch"], record)
            else:
                logger.warning("the best epoch so far by %s, %d, has no checkpoint files in %s "
                               "any more: the next validation starts the best anew",
                               self.metric.spec, record["epoch"], self.folder)
                return
            self.since_best = len(validated) - 1 - top
        elif saved is not None and saved["metric"] == self.metric.spec:
            self.best = saved
            self.since_best = sum(1 for r in validated if r["epoch"] > saved["epoch"])
        elif saved is not None:
            logger.warning("%s was chosen by %s, this run uses TRAIN.best_metric %s and the "
                           "metrics file lacks it: the next validation starts the best anew",
                           best_path, saved["metric"], self.metric.spec)


class ValidationHook(HookBase):
    """Validation, the best checkpoint and the validation log line.

    Shares ``trainer.storage["best"]`` (best.json's record) and
    ``trainer.storage["since_best"]`` with the early-stop hook."""

    priority = 40

    def __init__(self, cfg: CfgNode) -> None:
        self.cfg = cfg
        self.patience = int(cfg.TRAIN.early_stop)
        names = class_names(cfg)
        self.metric = parse_best_metric(cfg.TRAIN.best_metric,
                                        [names[k] for k in range(len(names))])
        self.tracker: BestCheckpoint | None = None

    def before_train(self, trainer: Trainer) -> None:
        self.tracker = BestCheckpoint(self.cfg.DIR, self.metric, validation_sizes(self.cfg),
                                      trainer.env.is_main, "eval_network" in trainer.storage)
        path = os.path.join(self.cfg.DIR, METRICS_FILE)
        if trainer.env.is_main and trainer.point is not None and os.path.isfile(path):
            kept = [r for r in read_metrics(path)
                    if int(r.get("global_iter", 0)) <= trainer.global_iter]
            self.tracker.resume(kept)
        self._share(trainer)

    def _share(self, trainer: Trainer) -> None:
        assert self.tracker is not None
        trainer.storage["best"] = self.tracker.best
        trainer.storage["since_best"] = self.tracker.since_best
        trainer.storage["best_metric"] = self.metric

    def after_epoch(self, trainer: Trainer) -> None:
        if not validation_due(self.cfg, trainer.epoch):
            return
        val = None
        if trainer.env.is_main:
            network = trainer.storage.get("eval_network", trainer.network)  # EMA's, when on
            val = validate(self.cfg, network, trainer.device, validation_sizes(self.cfg))
        D.barrier()
        trainer.model.train(not self.cfg.TRAIN.fix_bn)
        if val is None:
            return
        record = trainer.record
        record.update(val_fields(val))
        record["best_metric"] = self.metric.spec
        record["val_score"] = self.metric.score(record)
        assert self.tracker is not None
        self.tracker.update(trainer.epoch, record)
        best = self.tracker.best
        if best is not None:
            record.update(best_epoch=best["epoch"], best_score=best["score"],
                          best_mean_iou=best["mean_iou"], val_since_best=self.tracker.since_best)
        self._share(trainer)
        logger.info("%s", self._line(trainer.epoch, record))

    def _line(self, epoch: int, record: dict[str, Any]) -> str:
        lowest = sorted(record["val_class_iou"].items(), key=lambda kv: kv[1])[:3]
        line = (f"Validation after epoch {epoch}: mean IoU {record['val_mean_iou']:.4f}, "
                f"accuracy {record['val_pixel_accuracy'] * 100:.2f}% ({record['val_images']} "
                f"images, {record['val_time']:.1f} s)")
        if self.metric.key != "mean_iou":
            line += f", {self.metric.label} {record['val_score']:.4f}"
        if lowest:
            line += "; lowest IoU: " + ", ".join(f"{k} {v:.2f}" for k, v in lowest)
        assert self.tracker is not None
        best = self.tracker.best
        if best is not None:
            line += (f"; best: epoch {best['epoch']}, {self.metric.label} "
                     f"{best['score']:.4f}")
            if self.patience > 0:
                line += (f" (no improvement for {self.tracker.since_best} of {self.patience} "
                         f"validations)")
        return line
