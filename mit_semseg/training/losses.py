"""Segmentation losses by name, and weighted sums of them (``TRAIN.loss``).

A loss is an ``nn.Module`` called as ``loss(log_probs, labels)``: ``log_probs``
``[N, C, h, w]`` are the decoder's log-probabilities (what a decoder returns in
training), ``labels`` ``[N, h, w]`` int64 class indices with ``-1`` for
unlabeled pixels, which every loss ignores. It returns a float32 scalar.

Registered losses (``register_loss`` adds more):

* ``cross_entropy`` (aliases ``ce``, ``nll``): the original's
  ``NLLLoss(ignore_index=-1)``; with class weights, each pixel's loss times its
  class's weight, divided by the sum of those weights.
* ``ohem``: cross-entropy over the hard pixels only (mmsegmentation's
  thresholded OHEM): a labeled pixel is kept when the predicted probability of
  its true class is below ``ohem_thresh``; when that keeps fewer than
  ``ohem_min_kept`` pixels per image, the least confident pixels are kept up to
  that number (all labeled pixels when there are fewer). The mean (class-weighted
  as ``cross_entropy``) over the kept pixels.
* ``dice``: ``1 - mean over images and classes of (2 sum(p t) + 1) / (sum(p^2) +
  sum(t^2) + 1)``, ``p`` the softmax probability, ``t`` the one-hot label, sums over
  the labeled pixels of one image (mmsegmentation 0.x's Dice loss: smooth 1,
  exponent 2).
* ``focal``: ``-(1 - p)^gamma log p`` of the true class (``focal_gamma``; 0 gives
  the cross-entropy), times the class weight, averaged over the labeled pixels.
* ``lovasz``: Lovasz-softmax (Berman et al. 2018), the convex surrogate of
  ``1 - IoU``, over the batch's labeled pixels and averaged over the classes
  present in the labels.

Class weights (``TRAIN.class_weights`` / ``class_weight_rule``) apply to
``cross_entropy``, ``ohem`` and ``focal``; ``dice`` and ``lovasz`` weigh every
class alike. A spec such as ``"ohem + 0.5*lovasz"`` is the weighted sum of its
terms (:func:`build_loss`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Sequence, TypeVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import ConfigError

__all__ = ["LOSSES", "LossOptions", "register_loss", "parse_loss", "build_loss",
           "OhemCrossEntropy", "DiceLoss", "FocalLoss", "LovaszSoftmax", "WeightedSum",
           "is_plain_cross_entropy"]


@dataclass(frozen=True)
class LossOptions:
    """The settings a loss factory may use (``TRAIN.*`` keys of the same names)."""

    class_weights: torch.Tensor | None = None
    ohem_thresh: float = 0.7
    ohem_min_kept: int = 100000
    focal_gamma: float = 2.0


LossFactory = Callable[[LossOptions], nn.Module]
# name -> factory(options) -> module(log_probs, labels)
LOSSES: dict[str, LossFactory] = {}
_ALIASES: dict[str, str] = {}

_F = TypeVar("_F")


def register_loss(name: str, *aliases: str) -> Callable[[_F], _F]:
    """Decorator: make ``factory(options: LossOptions) -> nn.Module`` available to
    ``TRAIN.loss`` as ``name`` (and ``aliases``), case-insensitively."""
    def wrap(factory: _F) -> _F:
        LOSSES[name.lower()] = factory  # type: ignore[assignment]
        for alias in aliases:
            _ALIASES[alias.lower()] = name.lower()
        return factory
    return wrap


_TERM = re.compile(r"^(?:(?P<w>[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*\*\s*)?"
                   r"(?P<name>[A-Za-z_]\w*)$")


def parse_loss(spec: str) -> list[tuple[float, str]]:
    """``"ohem + 0.5*lovasz"`` -> ``[(1.0, "ohem"), (0.5, "lovasz")]`` (names resolved
    through the aliases). Raises ConfigError naming ``TRAIN.loss`` and the term at fault."""
    terms = []
    for raw in str(spec).split("+"):
        m = _TERM.match(raw.strip())
        if m is None:
            raise ConfigError(f"TRAIN.loss {spec!r}: cannot read the term {raw.strip()!r}; "
                              f"write a sum of [WEIGHT*]NAME terms, e.g. \"ohem + 0.5*lovasz\"")
        name = m.group("name").lower()
        name = _ALIASES.get(name, name)
        if name not in LOSSES:
            raise ConfigError(f"TRAIN.loss {spec!r}: unknown loss '{m.group('name')}'; registered "
                              f"losses: {sorted(LOSSES)} (aliases: {sorted(_ALIASES)})")
        terms.append((float(m.group("w")) if m.group("w") else 1.0, name))
    return terms


def is_plain_cross_entropy(spec: str) -> bool:
    """True when ``spec`` is the original's loss alone (weight 1)."""
    return parse_loss(spec) == [(1.0, "cross_entropy")]


class WeightedSum(nn.Module):
    """``sum(weight * loss(log_probs, labels))`` over its terms."""

    def __init__(self, terms: Sequence[tuple[float, nn.Module]]) -> None:
        super().__init__()
        self.weights = [float(w) for w, _ in terms]
        self.terms = nn.ModuleList(m for _, m in terms)

    def forward(self, log_probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        total = None
        for w, loss in zip(self.weights, self.terms):
            value = loss(log_probs, labels).float() * w
            total = value if total is None else total + value
        assert total is not None
        return total


def build_loss(spec: str, options: LossOptions | None = None) -> nn.Module:
    """The module of ``spec`` (a ``TRAIN.loss`` value): the loss itself for one term of
    weight 1, else a :class:`WeightedSum`."""
    options = options or LossOptions()
    terms = parse_loss(spec)
    if len(terms) == 1 and terms[0][0] == 1.0:
        return LOSSES[terms[0][1]](options)
    return WeightedSum([(w, LOSSES[name](options)) for w, name in terms])


def _true_class_log_prob(log_probs: torch.Tensor, labels: torch.Tensor
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(log p of the true class [N, h, w] float32 (0 where unlabeled), labeled mask,
    labels with -1 replaced by 0)."""
    valid = labels >= 0
    safe = labels.clamp(min=0)
    picked = log_probs.float().gather(1, safe.unsqueeze(1)).squeeze(1)
    return picked.masked_fill(~valid, 0.0), valid, safe


def _class_weight(weights: torch.Tensor | None, labels: torch.Tensor,
                  like: torch.Tensor) -> torch.Tensor:
    if weights is None:
        return torch.ones_like(like)
    return weights.to(device=like.device, dtype=like.dtype)[labels]


def _zero(log_probs: torch.Tensor) -> torch.Tensor:
    """A zero loss that keeps the graph (a batch without labeled pixels)."""
    return log_probs.float().sum() * 0.0


@register_loss("cross_entropy", "ce", "nll")
def _cross_entropy(options: LossOptions) -> nn.Module:
    return nn.NLLLoss(weight=options.class_weights, ignore_index=-1)


class OhemCrossEntropy(nn.Module):
    """Cross-entropy over the hard pixels (see the module docstring)."""

    def __init__(self, thresh: float = 0.7, min_kept: int = 100000,
                 weight: torch.Tensor | None = None) -> None:
        super().__init__()
        self.thresh, self.min_kept = float(thresh), int(min_kept)
        self.register_buffer("weight", weight.clone() if weight is not None else None)

    def forward(self, log_probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logp, valid, safe = _true_class_log_prob(log_probs, labels)
        with torch.no_grad():
            keep = valid & (logp.exp() < self.thresh)
            wanted = min(self.min_kept * labels.shape[0], int(valid.sum()))
            if int(keep.sum()) < wanted:
                # the `wanted` least confident labeled pixels join the kept ones
                prob = logp.exp().masked_fill(~valid, float("inf")).flatten()
                hardest = prob.topk(wanted, largest=False).indices
                keep.view(-1)[hardest] = True
        w = _class_weight(self.weight, safe, logp) * keep
        total = w.sum()
        if float(total) == 0.0:
            return _zero(log_probs)
        return -(logp * w).sum() / total


@register_loss("ohem")
def _ohem(options: LossOptions) -> nn.Module:
    return OhemCrossEntropy(options.ohem_thresh, options.ohem_min_kept, options.class_weights)


class DiceLoss(nn.Module):
    """Multi-class Dice loss on the softmax probabilities (see the module docstring)."""

    def __init__(self, smooth: float = 1.0, exponent: float = 2.0) -> None:
        super().__init__()
        self.smooth, self.exponent = float(smooth), float(exponent)

    def forward(self, log_probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        num_class = log_probs.shape[1]
        valid = (labels >= 0).unsqueeze(1)
        probs = log_probs.float().exp() * valid
        target = F.one_hot(labels.clamp(min=0), num_class).permute(0, 3, 1, 2).float() * valid
        inter = (probs * target).sum(dim=(2, 3))
        denom = probs.pow(self.exponent).sum(dim=(2, 3)) + target.pow(self.exponent).sum(dim=(2, 3))
        dice = (2.0 * inter + self.smooth) / (denom + self.smooth)
        return 1.0 - dice.mean()


@register_loss("dice")
def _dice(options: LossOptions) -> nn.Module:
    return DiceLoss()


class FocalLoss(nn.Module):
    """Softmax focal loss (Lin et al. 2017; see the module docstring)."""

    def __init__(self, gamma: float = 2.0, weight: torch.Tensor | None = None) -> None:
        super().__init__()
        self.gamma = float(gamma)
        self.register_buffer("weight", weight.clone() if weight is not None else None)

    def forward(self, log_probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logp, valid, safe = _true_class_log_prob(log_probs, labels)
        count = valid.sum()
        if int(count) == 0:
            return _zero(log_probs)
        modulating = (1.0 - logp.exp()).clamp(min=0.0).pow(self.gamma)
        per_pixel = -modulating * logp * _class_weight(self.weight, safe, logp)
        return (per_pixel * valid).sum() / count


@register_loss("focal")
def _focal(options: LossOptions) -> nn.Module:
    return FocalLoss(options.focal_gamma, options.class_weights)


class LovaszSoftmax(nn.Module):
    """Lovasz-softmax over the labeled pixels of the batch, averaged over the classes
    present in the labels (see the module docstring)."""

    def forward(self, log_probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        num_class = log_probs.shape[1]
        probs = log_probs.float().exp().permute(0, 2, 3, 1).reshape(-1, num_class)
        flat = labels.reshape(-1)
        valid = flat >= 0
        probs, flat = probs[valid], flat[valid]
        if flat.numel() == 0:
            return _zero(log_probs)
        present = torch.bincount(flat, minlength=num_class).nonzero().squeeze(1)
        # only the classes present: [P, K], sorted per class by decreasing error
        fg = (flat.unsqueeze(1) == present.unsqueeze(0)).float()
        errors = (fg - probs[:, present]).abs()
        errors, order = errors.sort(dim=0, descending=True)
        fg = fg.gather(0, order)
        # gradient of the Lovasz extension of the Jaccard loss at the sorted errors
        total = fg.sum(dim=0, keepdim=True)
        intersection = total - fg.cumsum(dim=0)
        union = total + (1.0 - fg).cumsum(dim=0)
        jaccard = 1.0 - intersection / union
        grad = torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]], dim=0)
        return (errors * grad).sum(dim=0).mean()


@register_loss("lovasz", "lovasz_softmax")
def _lovasz(options: LossOptions) -> nn.Module:
    return LovaszSoftmax()
