"""The EMA hook: an exponential moving average of the weights (``TRAIN.ema_decay``).

After every iteration, every floating-point entry of the encoder's and decoder's
state dicts (parameters and BatchNorm running statistics) moves towards the
trained weights: ``ema = decay * ema + (1 - decay) * weights``; integer entries
(``num_batches_tracked``) are copied. The average starts as a copy of the weights
when training starts, is kept in float32 whatever ``TRAIN.precision`` is, and is
a separate network (``trainer.storage["eval_network"]``), so that:

* validation (``TRAIN.eval_every``) evaluates the average, and the best
  checkpoint (``encoder_best.pth`` / ``decoder_best.pth``, best.json) is the
  average's;
* after every epoch N it is written as ``DIR/encoder_ema_epoch_N.pth`` and
  ``DIR/decoder_ema_epoch_N.pth`` (or ``.safetensors``, ``TRAIN.save_format``),
  state dicts with the model's own keys: evaluate them with ``VAL.checkpoint
  ema_epoch_N.pth`` (``TEST.checkpoint`` likewise);
* every state file (``state_epoch_N.pth``, ``state_iter_G.pth``) holds the
  average and its update count, so a resumed run continues it exactly.

Precise BN (``TRAIN.precise_bn_iters``) recomputes the trained network's
statistics only; the average keeps the average of the running statistics.
"""
from __future__ import annotations

import copy
import logging
import os
from typing import Any

import torch
from yacs.config import CfgNode

from ..resume import save_weights, weights_suffix
from ..trainer import HookBase, Trainer

__all__ = ["EMAHook", "ema_epoch_paths", "EMA_STATE_KEY"]

logger = logging.getLogger("Logger")

EMA_STATE_KEY = "ema"  # key of the average in a state file's "hooks" entry


def ema_epoch_paths(directory: str, epoch: int) -> dict[str, str]:
    """Paths of the epoch-``epoch`` averaged weights (``.pth`` names): keys encoder, decoder."""
    return {kind: os.path.join(directory, f"{kind}_ema_epoch_{epoch}.pth")
            for kind in ("encoder", "decoder")}


class EMAHook(HookBase):
    """Keeps, saves and restores the moving average (see the module docstring).

    Runs before the checkpoint hook (a step's update is in the state file written
    after that step) and before validation (which evaluates
    ``trainer.storage["eval_network"]``); after precise BN."""

    priority = 25
    state_key = EMA_STATE_KEY  # resume.write_checkpoint stores state_dict() under it

    def __init__(self, cfg: CfgNode) -> None:
        self.cfg = cfg
        self.decay = float(cfg.TRAIN.ema_decay)
        self.network: torch.nn.Module | None = None
        self.updates = 0
        self._floats: tuple[list[torch.Tensor], list[torch.Tensor]] = ([], [])
        self._others: list[tuple[torch.Tensor, torch.Tensor]] = []

    # ------------------------------------------------------------------ events
    def before_train(self, trainer: Trainer) -> None:
        net = copy.deepcopy(trainer.network)
        net.eval()
        for p in net.parameters():
            p.requires_grad_(False)
        for t in list(net.parameters()) + list(net.buffers()):
            if t.is_floating_point() and t.dtype != torch.float32:
                t.data = t.data.float()
        state = trainer.point.state if trainer.point is not None else None
        saved = ((state or {}).get("hooks") or {}).get(self.state_key)
        if saved is not None:
            for part in ("encoder", "decoder"):
                getattr(net, part).load_state_dict(saved[part])
            self.updates = int(saved.get("updates", 0))
        elif trainer.point is not None:
            logger.warning("%s holds no moving average of the weights (TRAIN.ema_decay was "
                           "off): the average starts from the resumed weights",
                           trainer.point.source)
        self.network = net
        live = {**{f"encoder.{k}": v for k, v in trainer.module.encoder.state_dict().items()},
                **{f"decoder.{k}": v for k, v in trainer.module.decoder.state_dict().items()}}
        own = {**{f"encoder.{k}": v for k, v in net.encoder.state_dict().items()},
               **{f"decoder.{k}": v for k, v in net.decoder.state_dict().items()}}
        self._floats = ([own[k] for k in own if own[k].is_floating_point()],
                        [live[k] for k in own if own[k].is_floating_point()])
        self._others = [(own[k], live[k]) for k in own if not own[k].is_floating_point()]
        trainer.storage["eval_network"] = net

    def after_step(self, trainer: Trainer) -> None:
        with torch.no_grad():
            averages, weights = self._floats
            if averages:  # one multi-tensor kernel (float32 average, weights as they are)
                torch._foreach_lerp_(averages, [w.to(torch.float32) for w in weights],
                                     1.0 - self.decay)
            for avg, now in self._others:
                avg.copy_(now)
        self.updates += 1

    def before_checkpoint(self, trainer: Trainer) -> None:
        """At the end of an epoch, write the average's weight files (before the state
        file, which marks the checkpoint complete)."""
        if trainer.iter < trainer.epoch_iters or not trainer.env.is_main:
            return
        suffix = weights_suffix(self.cfg)
        for kind, pth in ema_epoch_paths(self.cfg.DIR, trainer.epoch).items():
            save_weights(self._cpu(kind), pth, suffix)

    # ------------------------------------------------------------------ state
    def _cpu(self, kind: str) -> dict[str, torch.Tensor]:
        assert self.network is not None
        return {k: v.detach().cpu().clone()
                for k, v in getattr(self.network, kind).state_dict().items()}

    def state_dict(self, trainer: Any = None) -> dict[str, Any]:
        """The average (CPU state dicts of both parts) and its update count."""
        return {"encoder": self._cpu("encoder"), "decoder": self._cpu("decoder"),
                "decay": self.decay, "updates": self.updates}
