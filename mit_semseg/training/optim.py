"""Optimizers and the learning-rate schedule of training.

The original's recipe stays the default: SGD with momentum, one optimizer for
the encoder and one for the decoder, no weight decay on biases and BatchNorm
parameters (``group_weight``), and the poly learning rate updated every
iteration. The default step uses a fused (else multi-tensor) SGD kernel
(``make_sgd``); ``TRAIN.exact`` keeps PyTorch's per-parameter loop. Both give
the same update up to float rounding.

Modern recipes (docs/training.md, "Training recipes"):

* ``TRAIN.optim``: a registry of optimizers (``register_optimizer``): ``SGD`` and
  ``AdamW`` (betas ``(TRAIN.beta1, TRAIN.beta2)``, decoupled weight decay
  ``TRAIN.weight_decay``). AdamW decays no parameter of one dimension or less
  (biases, the weights of every norm layer, layer-scale gammas), no parameter
  whose name ends in ``bias``, no parameter of a norm layer, no position
  embedding or token (a last name component containing ``pos_embed``,
  ``position_embedding``, ``relative_position`` or ``rel_pos``, or ending in
  ``token``/``tokens``) and nothing a module lists in its ``no_weight_decay()``
  (timm's convention).
* ``TRAIN.layer_decay`` < 1: layer-wise learning-rate decay of the encoder. Each
  encoder parameter gets a depth ``d`` in ``0..D-1`` (see
  :func:`encoder_layer_ids`) and learns at ``lr_encoder * layer_decay ** (D - d)``;
  encoder parameters placed in no layer and the decoder learn at their base rate.
  Optimizer groups carry that factor as ``lr_scale``.
* ``TRAIN.lr_schedule`` ``poly`` or ``cosine`` over the whole run, times a linear
  warmup factor from ``TRAIN.warmup_ratio`` to 1 over the first
  ``TRAIN.warmup_iters`` iterations (:func:`scheduled_lr`).
"""
from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence, TypeVar

import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm
from yacs.config import CfgNode

from ..config import ConfigError

__all__ = ["group_weight", "make_sgd", "create_optimizers", "load_optimizer_state", "poly_lr",
           "cosine_lr", "warmup_factor", "scheduled_lr", "adjust_learning_rate", "OPTIMIZERS",
           "register_optimizer", "original_no_decay", "modern_no_decay", "parameter_groups",
           "encoder_layer_ids"]

logger = logging.getLogger("Logger")

# which parameters skip weight decay: rule(module, local name, parameter, full name) -> bool
NoDecayRule = Callable[[nn.Module, str, nn.Parameter, str], bool]
OptimizerFactory = Callable[[list, float, CfgNode], torch.optim.Optimizer]


@dataclass(frozen=True)
class _Entry:
    factory: OptimizerFactory
    no_decay: NoDecayRule


# TRAIN.optim (lower case) -> how to build it and which parameters it does not decay
OPTIMIZERS: dict[str, _Entry] = {}

_F = TypeVar("_F")


def original_no_decay(module: nn.Module, name: str, param: nn.Parameter, full_name: str) -> bool:
    """The original's rule (``group_weight``): BatchNorm parameters, biases and every
    parameter of one dimension or less."""
    return isinstance(module, _BatchNorm) or name == "bias" or param.ndim <= 1


_NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm)
_EMBEDDING_PARTS = ("pos_embed", "position_embedding", "relative_position", "rel_pos")


def modern_no_decay(module: nn.Module, name: str, param: nn.Parameter, full_name: str) -> bool:
    """AdamW's rule (see the module docstring); ``no_weight_decay()`` lists are added
    by :func:`parameter_groups`."""
    return (param.ndim <= 1 or name.endswith("bias") or isinstance(module, _NORMS)
            or any(part in name for part in _EMBEDDING_PARTS)
            or name.endswith("token") or name.endswith("tokens"))


def register_optimizer(name: str, *, no_decay: NoDecayRule = original_no_decay
                       ) -> Callable[[_F], _F]:
    """Decorator: make ``factory(groups, lr, cfg) -> Optimizer`` available as
    ``TRAIN.optim name`` (case-insensitive). ``groups``: parameter groups (each with
    its ``weight_decay``; ``lr_scale`` with layer decay); ``no_decay``: which
    parameters get weight decay 0."""
    def wrap(factory: _F) -> _F:
        OPTIMIZERS[name.lower()] = _Entry(factory, no_decay)  # type: ignore[arg-type]
        return factory
    return wrap


def _entry(name: str) -> _Entry:
    key = str(name).lower()
    if key not in OPTIMIZERS:
        raise ConfigError(f"TRAIN.optim '{name}' is not a registered optimizer; expected one of "
                          f"{sorted(OPTIMIZERS)} (mit_semseg.training.optim.register_optimizer)")
    return OPTIMIZERS[key]


# ============================================================================ parameter groups

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


def _listed_no_decay(net: nn.Module) -> set[str]:
    """Full names of the parameters that modules list in ``no_weight_decay()``."""
    names: set[str] = set()
    for prefix, m in net.named_modules():
        listed = getattr(m, "no_weight_decay", None)
        if callable(listed):
            try:
                entries = listed()
            except TypeError:
                continue
            names.update(f"{prefix}.{n}" if prefix else str(n) for n in entries)
    return names


def parameter_groups(net: nn.Module, weight_decay: float, no_decay: NoDecayRule,
                     layer_ids: Mapping[str, int] | None = None, depth: int = 0,
                     layer_decay: float = 1.0) -> list[dict[str, Any]]:
    """Parameter groups of ``net``: by weight decay (``weight_decay``, or 0 where
    ``no_decay`` or a ``no_weight_decay()`` list says so) and, with ``layer_ids``
    (full name -> depth in ``0..depth-1``), by layer with ``lr_scale = layer_decay **
    (depth - d)`` (names without a depth: 1). Groups come in order of depth, decayed
    first; empty groups are left out."""
    listed = _listed_no_decay(net)
    groups: dict[tuple[int, bool], list[nn.Parameter]] = {}
    seen: set[int] = set()
    for prefix, m in net.named_modules():
        for name, p in m.named_parameters(recurse=False):
            if id(p) in seen:
                continue
            seen.add(id(p))
            full = f"{prefix}.{name}" if prefix else name
            free = full in listed or no_decay(m, name, p, full)
            d = depth if layer_ids is None else int(layer_ids.get(full, depth))
            groups.setdefault((d, free), []).append(p)
    out = []
    for (d, free), params in sorted(groups.items()):
        group: dict[str, Any] = {"params": params, "weight_decay": 0.0 if free else weight_decay}
        if layer_ids is not None:
            group["lr_scale"] = layer_decay ** (depth - d)
            group["layer_id"] = d
        out.append(group)
    return out


# ============================================================================ layer depths

_EMBED = re.compile(r"(?:^|\.)(?:stem(?:_\d+)?|patch_embed|downsample_layers\.0)\."
                    r"|(?:^|\.)(?:pos_embed|cls_token|reg_token|dist_token|mask_token|"
                    r"absolute_pos_embed)$")
_STAGE_BLOCK = re.compile(r"(?:^|\.)(?:stages|layers)[._](\d+)\.(?:blocks\.)?(\d+)\.")
_STAGE = re.compile(r"(?:^|\.)(?:(?:stages|layers)[._]|downsample_layers\.)(\d+)\.")
_BLOCK = re.compile(r"(?:^|\.)blocks\.(\d+)\.")


def _name_layer_ids(names: Sequence[str], mode: str) -> dict[str, int]:
    """Depths from the usual parameter names of ConvNeXt (``stages.S[.blocks].B``,
    ``downsample_layers.S``), Swin (``layers.S.blocks.B``) and ViT (``blocks.B``),
    also as timm's feature wrappers name them (``stages_S``, ``stem_0``). Depth 0: the
    stem, patch embedding, position embeddings and tokens; then one depth per block
    (``mode`` "layer") or per stage ("stage"), a stage's downsampling layer with its
    first block (a ViT has no stages: one depth per block in both modes). Names
    matching none are left out."""
    keys: dict[str, tuple[int, int] | None] = {}
    for name in names:
        if _EMBED.search(name):
            keys[name] = None
        elif m := _STAGE_BLOCK.search(name):
            keys[name] = (int(m.group(1)), int(m.group(2)))
        elif m := _STAGE.search(name):
            keys[name] = (int(m.group(1)), 0)
        elif m := _BLOCK.search(name):
            keys[name] = (-1, int(m.group(1)))  # a ViT: blocks without stages
    if mode == "stage":  # a ViT's blocks stay one depth each, as timm's coarse groups
        keys = {n: (k[0], 0) if k is not None and k[0] >= 0 else k for n, k in keys.items()}
    order = sorted({k for k in keys.values() if k is not None})
    rank = {k: i + 1 for i, k in enumerate(order)}
    if not order:
        return {}
    return {n: 0 if k is None else rank[k] for n, k in keys.items()}


def _timm_layer_ids(encoder: nn.Module, mode: str) -> dict[str, int] | None:
    """Depths from timm's ``group_matcher`` of the first (sub)module that has one
    (fine groups for "layer", coarse for "stage"); None without one or without timm."""
    for prefix, m in encoder.named_modules():
        matcher = getattr(m, "group_matcher", None)
        if not callable(matcher):
            continue
        try:
            from timm.models import group_parameters
        except ImportError:
            return None
        mapping = group_parameters(m, matcher(coarse=mode == "stage"), reverse=True)
        return {(f"{prefix}.{n}" if prefix else n): int(d) for n, d in mapping.items()}
    return None


def encoder_layer_ids(encoder: nn.Module, mode: str = "layer") -> tuple[dict[str, int], int]:
    """``(depth of each encoder parameter name, number of depths D)`` for layer-wise
    learning-rate decay; parameters not in the mapping are above every layer.

    Where the depths come from, first found: the encoder's own ``layer_ids(mode)``
    (a family may declare it: parameter name -> depth from 0); timm's
    ``group_matcher`` of a timm model inside the encoder; the parameter names of
    ConvNeXt, Swin and ViT (see ``_name_layer_ids``). Raises ConfigError when none
    places any parameter (e.g. the original's ResNet and MobileNet families).
    """
    own = getattr(encoder, "layer_ids", None)
    ids = dict(own(mode)) if callable(own) else None
    if ids is None:
        ids = _timm_layer_ids(encoder, mode)
    if ids is None:
        ids = _name_layer_ids([n for n, _ in encoder.named_parameters()], mode)
    if not ids:
        raise ConfigError(
            f"TRAIN.layer_decay: cannot tell the layers of the encoder {type(encoder).__name__} "
            f"(it has no layer_ids(mode) method, no timm group_matcher and no ConvNeXt, Swin or "
            f"ViT parameter names); set TRAIN.layer_decay 1.0 for this encoder")
    return ids, max(ids.values()) + 1


def _log_groups(which: str, groups: list[dict[str, Any]], names: dict[int, str]) -> None:
    rows = []
    for g in groups:
        count = sum(p.numel() for p in g["params"])
        first = names.get(id(g["params"][0]), "?")
        rows.append(f"  layer {g['layer_id']:>3}  lr x {g['lr_scale']:.4g}  weight decay "
                    f"{g['weight_decay']:g}  {len(g['params'])} tensors, {count} values "
                    f"(first: {first})")
    logger.info("Layer-wise learning-rate decay of the %s:\n%s", which, "\n".join(rows))


# ============================================================================ optimizers

def _fast(cls: type, params: Any, impl: str, **kwargs: Any) -> torch.optim.Optimizer:
    """``cls(params, **kwargs)`` fused where this PyTorch supports it for the
    parameters' device, else multi-tensor ("auto"); PyTorch's loop ("loop")."""
    if impl == "loop":
        return cls(params, foreach=False, **kwargs)
    params = list(params)
    try:
        return cls(params, fused=True, **kwargs)
    except (RuntimeError, ValueError, TypeError):
        return cls(params, foreach=True, **kwargs)


@register_optimizer("sgd", no_decay=original_no_decay)
def _sgd(groups: list, lr: float, cfg: CfgNode) -> torch.optim.Optimizer:
    # Default: one fused (else multi-tensor) kernel per step; TRAIN.exact keeps
    # PyTorch's default implementation. The same update up to float rounding.
    sgd = torch.optim.SGD if cfg.TRAIN.exact else make_sgd
    return sgd(groups, lr=lr, momentum=cfg.TRAIN.beta1, weight_decay=cfg.TRAIN.weight_decay)


@register_optimizer("adamw", no_decay=modern_no_decay)
def _adamw(groups: list, lr: float, cfg: CfgNode) -> torch.optim.Optimizer:
    t = cfg.TRAIN
    return _fast(torch.optim.AdamW, groups, "loop" if t.exact else "auto", lr=lr,
                 betas=(float(t.beta1), float(t.beta2)), weight_decay=float(t.weight_decay))


def create_optimizers(nets: Sequence[nn.Module], cfg: CfgNode
                      ) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer]:
    """``(encoder optimizer, decoder optimizer)`` for ``nets = (encoder, decoder[, crit])``
    of ``TRAIN.optim``, with layer-wise decay of the encoder's rates when
    ``TRAIN.layer_decay`` < 1 (see the module docstring)."""
    t = cfg.TRAIN
    entry = _entry(t.optim)
    encoder, decoder = nets[0], nets[1]
    layer_decay = float(t.layer_decay)
    opts = []
    for which, net, lr in (("encoder", encoder, float(t.lr_encoder)),
                           ("decoder", decoder, float(t.lr_decoder))):
        if which == "encoder" and layer_decay != 1.0:
            ids, depth = encoder_layer_ids(net, str(t.layer_decay_mode).lower())
            groups = parameter_groups(net, float(t.weight_decay), entry.no_decay, ids, depth,
                                      layer_decay)
            _log_groups(which, groups, {id(p): n for n, p in net.named_parameters()})
            for g in groups:
                g["lr"] = lr * g["lr_scale"]
        elif entry.no_decay is original_no_decay:
            groups = group_weight(net)  # the original's groups, in its order
        else:
            groups = parameter_groups(net, float(t.weight_decay), entry.no_decay)
        opts.append(entry.factory(groups, lr, cfg))
    return opts[0], opts[1]


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


# ============================================================================ schedule

def poly_lr(base_lr: float, cur_iter: int, max_iters: int, power: float) -> float:
    """``base_lr * (1 - cur_iter / max_iters) ** power`` (0 once ``cur_iter >= max_iters``)."""
    return base_lr * max(0.0, 1.0 - float(cur_iter) / max_iters) ** power


def cosine_lr(base_lr: float, cur_iter: int, max_iters: int) -> float:
    """``base_lr * (1 + cos(pi * cur_iter / max_iters)) / 2`` (0 once ``cur_iter >=
    max_iters``)."""
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, float(cur_iter) / max_iters)))


def warmup_factor(cur_iter: int, warmup_iters: int, ratio: float) -> float:
    """``ratio + (1 - ratio) * cur_iter / warmup_iters`` during the warmup, then 1."""
    if cur_iter >= warmup_iters:
        return 1.0
    return ratio + (1.0 - ratio) * float(cur_iter) / warmup_iters


def scheduled_lr(base_lr: float, cur_iter: int, cfg: CfgNode) -> float:
    """The learning rate of iteration ``cur_iter`` (0-based over the whole run,
    ``max_iters = epoch_iters * num_epoch``): ``TRAIN.lr_schedule`` times the warmup
    factor (exactly ``poly_lr`` for the original's settings)."""
    t = cfg.TRAIN
    max_iters = t.epoch_iters * t.num_epoch
    if str(t.lr_schedule).lower() == "cosine":
        lr = cosine_lr(base_lr, cur_iter, max_iters)
    else:
        lr = poly_lr(base_lr, cur_iter, max_iters, t.lr_pow)
    warmup = int(t.warmup_iters)
    if cur_iter < warmup:
        lr *= warmup_factor(cur_iter, warmup, float(t.warmup_ratio))
    return lr


def adjust_learning_rate(optimizers: Sequence[torch.optim.Optimizer], cur_iter: int,
                         cfg: CfgNode) -> tuple[float, float]:
    """Set the learning rates of iteration ``cur_iter`` (:func:`scheduled_lr`; each group
    times its ``lr_scale`` when it has one); return the (encoder, decoder) base rates."""
    lrs = (scheduled_lr(cfg.TRAIN.lr_encoder, cur_iter, cfg),
           scheduled_lr(cfg.TRAIN.lr_decoder, cur_iter, cfg))
    for optimizer, lr in zip(optimizers, lrs):
        for group in optimizer.param_groups:
            group["lr"] = lr * group["lr_scale"] if "lr_scale" in group else lr
    return lrs
