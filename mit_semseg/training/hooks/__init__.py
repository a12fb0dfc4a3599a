"""Trainer hooks, one module each, and the registry that builds them from a config.

``build_hooks(cfg)`` returns the hooks a config asks for: always the learning-rate
schedule, checkpoints and resume, and the metrics file (TensorBoard with
``TRAIN.tensorboard``); precise BN with ``TRAIN.precise_bn_iters``; the moving
average of the weights with ``TRAIN.ema_decay``; validation and the best
checkpoint with ``TRAIN.eval_every``; early stopping with ``TRAIN.early_stop``;
then every hook named in ``TRAIN.hooks``. A hook of your own is a module that
registers its class::

    from mit_semseg.training.hooks import register_hook
    from mit_semseg.training.trainer import HookBase

    @register_hook("print_loss")
    class PrintLoss(HookBase):
        def after_step(self, trainer):
            print(trainer.global_iter, trainer.step.loss)

and is switched on with ``TRAIN.hooks ['print_loss']`` (import the module first,
or name it as ``TRAIN.hooks ['my_package.my_module:print_loss']``).
"""
from __future__ import annotations

import importlib
from typing import Callable, TypeVar

from yacs.config import CfgNode

from ...config import ConfigError
from ..trainer import HookBase
from .checkpoint import CheckpointHook
from .early_stop import EarlyStopHook
from .ema import EMAHook
from .lr_schedule import LRScheduleHook
from .metrics import MetricsHook
from .precise_bn import PreciseBNHook, precise_bn
from .validation import ValidationHook

__all__ = ["HOOKS", "register_hook", "build_hooks", "HookBase", "CheckpointHook",
           "EarlyStopHook", "EMAHook", "LRScheduleHook", "MetricsHook", "PreciseBNHook",
           "ValidationHook",
           "precise_bn"]

# hooks that TRAIN.hooks may name: name -> factory(cfg) -> HookBase
HOOKS: dict[str, Callable[[CfgNode], HookBase]] = {}

_H = TypeVar("_H")


def register_hook(name: str) -> Callable[[_H], _H]:
    """Decorator: make a ``HookBase`` subclass (built as ``cls(cfg)`` when its
    ``__init__`` takes the config, else ``cls()``) available to ``TRAIN.hooks``."""
    def wrap(cls: _H) -> _H:
        HOOKS[name.lower()] = cls  # type: ignore[assignment]
        return cls
    return wrap


def _make(factory: Callable, cfg: CfgNode) -> HookBase:
    try:
        return factory(cfg)
    except TypeError:
        return factory()


def _named(spec: str) -> Callable[[CfgNode], HookBase]:
    name = str(spec).strip()
    if ":" in name:  # module:name imports the module that registers it
        module, name = name.split(":", 1)
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise ConfigError(f"TRAIN.hooks '{spec}': cannot import {module}: {exc}") from None
    key = name.lower()
    if key not in HOOKS:
        raise ConfigError(f"TRAIN.hooks: unknown hook '{spec}'; registered hooks: "
                          f"{sorted(HOOKS) or 'none'} (a hook registers itself with "
                          f"@register_hook in a module imported before training)")
    return HOOKS[key]


def build_hooks(cfg: CfgNode) -> list[HookBase]:
    """The hooks ``cfg`` asks for (see the module docstring), unsorted."""
    t = cfg.TRAIN
    hooks: list[HookBase] = [LRScheduleHook(cfg), CheckpointHook(cfg), MetricsHook(cfg)]
    if int(t.precise_bn_iters) > 0:
        hooks.append(PreciseBNHook(cfg))
    if float(t.get("ema_decay", 0.0)) > 0:
        hooks.append(EMAHook(cfg))
    if int(t.eval_every) > 0:
        hooks.append(ValidationHook(cfg))
        if int(t.early_stop) > 0:
            hooks.append(EarlyStopHook(cfg))
    for spec in t.get("hooks", []) or []:
        hooks.append(_make(_named(spec), cfg))
    return hooks
