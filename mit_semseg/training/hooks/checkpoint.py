"""The checkpoint hook: resume where a run stopped, write the mid-epoch state every
``TRAIN.checkpoint_every`` steps and the epoch-N checkpoint after every epoch
(files and formats: :mod:`mit_semseg.training.resume` and ``state``)."""
from __future__ import annotations

from yacs.config import CfgNode

from ..resume import restore
from ..trainer import HookBase, Trainer

__all__ = ["CheckpointHook"]


class CheckpointHook(HookBase):
    """``before_train``: optimizers, scaler, history and the random state of the
    resume point (``trainer.point``; weights were loaded when the network was
    built). ``after_step``: the ``state_iter_G.pth`` of ``TRAIN.checkpoint_every``.
    ``after_epoch``: the epoch's checkpoint (first of the epoch-end hooks, so that
    validation and the best checkpoint see it)."""

    priority = 30

    def __init__(self, cfg: CfgNode) -> None:
        self.every = int(cfg.TRAIN.checkpoint_every)

    def before_train(self, trainer: Trainer) -> None:
        if trainer.point is not None:
            restore(trainer, trainer.point)
            state = trainer.point.state
            if state is not None and "rng" in state:
                trainer.storage["resume_rng"] = state["rng"]

    def after_step(self, trainer: Trainer) -> None:
        done = trainer.iter + 1
        if self.every > 0 and done % self.every == 0 and done < trainer.epoch_iters:
            trainer.checkpoint(trainer.epoch, done)

    def after_epoch(self, trainer: Trainer) -> None:
        trainer.checkpoint(trainer.epoch, trainer.epoch_iters)
