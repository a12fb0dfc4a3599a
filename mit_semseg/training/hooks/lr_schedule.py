"""The learning-rate schedule hook: the original's poly schedule, set before every
step (``lr * (1 - iter / max_iters) ** lr_pow``, ``max_iters = epoch_iters *
num_epoch``, one rate for the encoder's optimizer and one for the decoder's)."""
from __future__ import annotations

from yacs.config import CfgNode

from ..optim import adjust_learning_rate
from ..trainer import HookBase, Trainer

__all__ = ["LRScheduleHook"]


class LRScheduleHook(HookBase):
    """Sets every optimizer's learning rate for the coming step; records the rates in
    ``trainer.step.lrs``."""

    priority = 10

    def __init__(self, cfg: CfgNode) -> None:
        self.cfg = cfg

    def before_step(self, trainer: Trainer) -> None:
        trainer.step.lrs = adjust_learning_rate(trainer.optimizers, trainer.global_iter, self.cfg)
