"""The precise-BN hook: before every checkpoint, BatchNorm running statistics become
their average over ``TRAIN.precise_bn_iters`` fresh training batches."""
from __future__ import annotations

import logging

import torch
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.parallel import DistributedDataParallel
from yacs.config import CfgNode

from ...runtime.process import loader_workers
from ..stream import BN_STREAM, derive_seed, make_loader
from ..trainer import HookBase, Trainer

__all__ = ["PreciseBNHook", "precise_bn"]

logger = logging.getLogger("Logger")


class PreciseBNHook(HookBase):
    """``precise_bn(trainer, TRAIN.precise_bn_iters)`` before every checkpoint."""

    priority = 20

    def __init__(self, cfg: CfgNode) -> None:
        self.num_batches = int(cfg.TRAIN.precise_bn_iters)

    def before_checkpoint(self, trainer: Trainer) -> None:
        precise_bn(trainer, self.num_batches)


def precise_bn(trainer: Trainer, num_batches: int) -> None:
    """Replace every BatchNorm's running mean and variance by their average over
    ``num_batches`` fresh training batches (train mode, no gradients).

    Each forward runs with momentum 1, so the running statistics become that
    batch's (synchronised) statistics, and they are averaged here with equal
    weights: the cumulative average that momentum ``None`` would give, which
    synchronised BatchNorm does not accept. Momenta are restored afterwards.
    Every rank runs the same number of forwards.
    """
    cfg = trainer.cfg
    layers = [m for m in trainer.module.modules()
              if isinstance(m, _BatchNorm) and m.track_running_stats]
    if num_batches <= 0 or not layers:
        return
    if cfg.TRAIN.fix_bn:
        logger.info("TRAIN.fix_bn is set: BatchNorm statistics stay frozen, precise BN skipped")
        return
    workers = min(loader_workers(cfg.TRAIN.workers), num_batches)
    bn_seed = derive_seed(cfg.TRAIN.seed, BN_STREAM, trainer.global_iter)
    loader, _ = make_loader(trainer.dataset, cfg, workers, trainer.per_iter, 0, num_batches,
                            lambda g: bn_seed, trainer.device.type == "cuda")
    model = trainer.model.module if isinstance(trainer.model, DistributedDataParallel) \
        else trainer.model
    momenta = [m.momentum for m in layers]
    # Synchronised BatchNorm keeps its moving average as sums weighted by
    # _running_iter (overwritten by momentum-1 updates): keep the weights.
    weights = [m._running_iter.clone() if hasattr(m, "_running_iter") else None for m in layers]
    means = [torch.zeros_like(m.running_mean) for m in layers]
    variances = [torch.zeros_like(m.running_var) for m in layers]
    was_training = trainer.module.training
    trainer.module.train()
    try:
        for m in layers:
            m.momentum = 1.0
        with torch.no_grad():
            for k, batches in enumerate(loader):
                with trainer.autocast():
                    trainer.forward(batches, model)
                for m, mean, var in zip(layers, means, variances):
                    mean.add_(m.running_mean - mean, alpha=1.0 / (k + 1))
                    var.add_(m.running_var - var, alpha=1.0 / (k + 1))
    finally:
        for m, momentum in zip(layers, momenta):
            m.momentum = momentum
        trainer.module.train(was_training)
    with torch.no_grad():
        for m, mean, var, weight in zip(layers, means, variances, weights):
            m.running_mean.copy_(mean)
            m.running_var.copy_(var)
            if weight is not None:  # later updates continue from these statistics
                m._running_iter.copy_(weight)
                m._tmp_running_mean.copy_(mean * weight)
                m._tmp_running_var.copy_(var * weight)
    logger.info("Precise BN: running statistics recomputed over %d batches", num_batches)
