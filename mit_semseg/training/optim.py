"""The optimizer of the recipe: SGD with momentum, one optimizer for the encoder
and one for the decoder, no weight decay on biases and BatchNorm parameters
(``group_weight``), and the poly learning rate updated every iteration.

The default step uses a fused (else multi-tensor) SGD kernel (``make_sgd``);
``TRAIN.exact`` keeps PyTorch's per-parameter loop. Both give the same update up
to float rounding.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm
from yacs.config import CfgNode

from ..config import ConfigError

__all__ = ["group_weight", "make_sgd", "create_optimizers", "load_optimizer_state", "poly_lr",
           "adjust_learning_rate"]


def group_weight(module: nn.Module) -> list[dict[str, Any]]:
    """Two SGD parameter groups: conv/linear weights (decayed) and biases plus
    BatchNorm parameters (``weight_decay`` 0), as the original's ``group_weight``
    (for this package's models, the same groups in the same order)."""
    decay, no_decay = [], []
    for m in module.modules():
        for name, p in m.named_parameters(recurse=False):
            if isinstance(m, _BatchNorm) or name == "bias" or p.ndim <= 1:
                no_decay.append(p)
            else:
                decay.append(p)
    return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]


def create_optimizers(nets: Sequence[nn.Module], cfg: CfgNode
                      ) -> tuple[torch.optim.SGD, torch.optim.SGD]:
    """``(encoder optimizer, decoder optimizer)`` for ``nets = (encoder, decoder[, crit])``."""
    if str(cfg.TRAIN.optim).upper() != "SGD":
        raise ConfigError(f"TRAIN.optim '{cfg.TRAIN.optim}' is not supported; use SGD")
    encoder, decoder = nets[0], nets[1]
    # Default: one fused (else multi-tensor) kernel per step; TRAIN.exact keeps
    # PyTorch's default implementation. The same update up to float rounding.
    sgd = torch.optim.SGD if cfg.TRAIN.exact else make_sgd
    return tuple(  # type: ignore[return-value]
        sgd(group_weight(net), lr=lr, momentum=cfg.TRAIN.beta1,
            weight_decay=cfg.TRAIN.weight_decay)
        for net, lr in ((encoder, cfg.TRAIN.lr_encoder), (decoder, cfg.TRAIN.lr_decoder)))


def load_optimizer_state(opt: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """``opt.load_state_dict(state)`` keeping ``opt``'s own implementation choice:
    PyTorch would take the saved groups' "fused"/"foreach" flags, and the run
    that wrote ``state`` may have had a different ``TRAIN.exact``."""
    impl = [{k: g[k] for k in ("fused", "foreach") if k in g} for g in opt.param_groups]
    opt.load_state_dict(state)
    for group, kept in zip(opt.param_groups, impl):
        group.update(kept)


def make_sgd(params: Any, lr: float, momentum: float = 0.0, weight_decay: float = 0.0,
             impl: str = "auto", **kwargs: Any) -> torch.optim.SGD:
    """``torch.optim.SGD`` with a multi-tensor implementation.

    ``impl``: "fused" (one kernel for all parameters), "foreach" (multi-tensor
    ops), "loop" (PyTorch's per-parameter loop; PyTorch's own default on CPU) or
    "auto" (fused where this PyTorch supports it for the parameters' device,
    else foreach). All give the same update up to float rounding.
    """
    if impl not in ("auto", "fused", "foreach", "loop"):
        raise ValueError(f"impl must be auto, fused, foreach or loop, got {impl!r}")
    if impl == "loop":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay,
                               foreach=False, **kwargs)
    if impl in ("auto", "fused"):
        params = list(params)
        try:
            return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay,
                                   fused=True, **kwargs)
        except (RuntimeError, ValueError, TypeError):
            if impl == "fused":
                raise
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay,
                           foreach=True, **kwargs)


def poly_lr(base_lr: float, cur_iter: int, max_iters: int, power: float) -> float:
    """``base_lr * (1 - cur_iter / max_iters) ** power`` (0 once ``cur_iter >= max_iters``)."""
    return base_lr * max(0.0, 1.0 - float(cur_iter) / max_iters) ** power


def adjust_learning_rate(optimizers: Sequence[torch.optim.Optimizer], cur_iter: int,
                         cfg: CfgNode) -> tuple[float, float]:
    """Set the poly learning rate of iteration ``cur_iter`` (0-based, counted over the
    whole run; ``max_iters = epoch_iters * num_epoch``); return (encoder lr, decoder lr)."""
    max_iters = cfg.TRAIN.epoch_iters * cfg.TRAIN.num_epoch
    lrs = (poly_lr(cfg.TRAIN.lr_encoder, cur_iter, max_iters, cfg.TRAIN.lr_pow),
           poly_lr(cfg.TRAIN.lr_decoder, cur_iter, max_iters, cfg.TRAIN.lr_pow))
    for optimizer, lr in zip(optimizers, lrs):
        for group in optimizer.param_groups:
            group["lr"] = lr
    return lrs
