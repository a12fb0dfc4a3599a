"""The early-stop hook: end the run when ``TRAIN.early_stop`` validations in a row
brought no better ``TRAIN.best_metric`` (rank 0 decides, every rank learns it).
Needs the validation hook, which keeps the best epoch."""
from __future__ import annotations

import logging

from yacs.config import CfgNode

from .. import distributed as D
from ..monitor import validation_due
from ..trainer import HookBase, Trainer

__all__ = ["EarlyStopHook"]

logger = logging.getLogger("Logger")


class EarlyStopHook(HookBase):
    """Sets ``trainer.stop`` (and the epoch record's ``stopped_early``)."""

    priority = 50

    def __init__(self, cfg: CfgNode) -> None:
        self.cfg = cfg
        self.patience = int(cfg.TRAIN.early_stop)

    def _should_stop(self, trainer: Trainer) -> bool:
        best = trainer.storage.get("best")
        return (self.patience > 0 and best is not None
                and int(trainer.storage.get("since_best", 0)) >= self.patience)

    def before_train(self, trainer: Trainer) -> None:
        """A resumed run whose records up to the resume point already met the
        patience has nothing to train."""
        if trainer.first_epoch > trainer.num_epoch:
            return
        stop = D.all_gather_objects(bool(trainer.env.is_main and self._should_stop(trainer)))[0]
        if stop:
            trainer.stop = trainer.stopped_early = True
            if trainer.env.is_main:
                best, metric = trainer.storage["best"], trainer.storage["best_metric"]
                logger.info("Nothing to do: the run stopped early (TRAIN.early_stop %d); best: "
                            "epoch %d, %s %.4f", self.patience, best["epoch"], metric.label,
                            best["score"])

    def after_epoch(self, trainer: Trainer) -> None:
        if not validation_due(self.cfg, trainer.epoch):  # the same answer on every rank
            return
        local = bool(trainer.env.is_main and self._should_stop(trainer))
        if local:
            trainer.record["stopped_early"] = True
        stop = D.all_gather_objects(local)[0]
        if not stop:
            return
        trainer.stop = trainer.stopped_early = True
        if trainer.env.is_main:
            self._log(trainer)

    def _log(self, trainer: Trainer) -> None:
        best, metric = trainer.storage["best"], trainer.storage["best_metric"]
        since = int(trainer.storage["since_best"])
        count = f"{since} validation{'' if since == 1 else 's'}"
        text = f"epoch {best['epoch']}, {metric.label} {best['score']:.4f}"
        if metric.key != "mean_iou":
            text += f" (mean IoU {best['mean_iou']:.4f})"
        logger.info("Early stop after epoch %d of %d: %s has not improved for %s (TRAIN."
                    "early_stop %d). Best: %s, kept as %s/encoder_best.pth and decoder_best.pth "
                    "(VAL.checkpoint best.pth)", trainer.epoch, trainer.num_epoch, metric.label,
                    count, self.patience, text, self.cfg.DIR)
