"""The learning-rate schedule hook: sets every optimizer's rates before every step.

The rate of iteration ``g`` (0-based over the run, ``max_iters = epoch_iters *
num_epoch``) is ``TRAIN.lr_schedule`` of the base rate (``poly``, the original's
``lr * (1 - g / max_iters) ** lr_pow``, or ``cosine``, ``lr * (1 + cos(pi * g /
max_iters)) / 2``), times a linear warmup factor from ``TRAIN.warmup_ratio`` to 1
over the first ``TRAIN.warmup_iters`` iterations; one base rate for the encoder's
optimizer (``TRAIN.lr_encoder``) and one for the decoder's (``TRAIN.lr_decoder``),
each group times its ``lr_scale`` (layer-wise decay). See
:mod:`mit_semseg.training.optim`."""
from __future__ import annotations

from yacs.config import CfgNode

from ..optim import adjust_learning_rate
from ..trainer import HookBase, Trainer

__all__ = ["LRScheduleHook"]


class LRScheduleHook(HookBase):
    """Sets every optimizer's learning rates for the coming step; records the base
    rates (encoder, decoder) in ``trainer.step.lrs`` (metrics.jsonl's ``lr_encoder``
    and ``lr_decoder``)."""

    priority = 10

    def __init__(self, cfg: CfgNode) -> None:
        self.cfg = cfg

    def before_step(self, trainer: Trainer) -> None:
        trainer.step.lrs = adjust_learning_rate(trainer.optimizers, trainer.global_iter, self.cfg)
