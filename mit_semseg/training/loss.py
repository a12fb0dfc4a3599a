"""The training loss: ``NLLLoss(ignore_index=-1)`` as the original, optionally
with class weights (``TRAIN.class_weights`` or ``TRAIN.class_weight_rule``), or
the weighted sum of registered losses that ``TRAIN.loss`` names
(:mod:`mit_semseg.training.losses`: OHEM, Dice, focal, Lovasz-softmax).

Weights from a rule are computed from the training list's masks when training
starts (:func:`mit_semseg.data.tools.class_statistics`; the rules are
documented at :func:`mit_semseg.data.tools.class_weights_from_counts`) and
written with the counts to ``DIR/class_weights.json``; a later start with the
same list, rule and label settings reads them from there instead of reading
every mask again.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn
from yacs.config import CfgNode

from ..checkpoints.files import atomic_write_text
from ..data.classes import class_names, label_format
from ..data.stats import ClassStatistics, class_statistics, format_weights
from ..runtime.process import loader_workers
from . import distributed as D
from .losses import LossOptions, build_loss, is_plain_cross_entropy

__all__ = ["WEIGHTS_FILE", "class_weights", "make_criterion", "build_criterion"]

WEIGHTS_FILE = "class_weights.json"

logger = logging.getLogger("Logger")


def _source(cfg: CfgNode) -> dict:
    """What the computed weights depend on (a cached file is reused only when equal)."""
    ds = cfg.DATASET
    path = os.path.abspath(ds.list_train)
    stat = os.stat(path)
    return {"list_train": path, "list_size": stat.st_size, "list_mtime": stat.st_mtime,
            "root_dataset": os.path.abspath(ds.root_dataset), "num_class": int(ds.num_class),
            "label_format": str(ds.label_format), "ignore_label": int(ds.ignore_label),
            "class_table": str(ds.class_table), "ignore_colors": list(ds.ignore_colors)}


def _statistics(cfg: CfgNode) -> ClassStatistics:
    """The training list's class counts: from ``DIR/class_weights.json`` when it was
    written for the same list and label settings, else read from every mask."""
    path = os.path.join(cfg.DIR, WEIGHTS_FILE)
    source = _source(cfg)
    if os.path.isfile(path):
        try:
            with open(path, encoding="utf-8") as fh:
                saved = json.load(fh)
            if saved.get("source") == source:
                return ClassStatistics(*(np.asarray(saved[k], np.int64)
                                         for k in ("pixels", "present", "images")),
                                       int(saved["num_samples"]))
        except (ValueError, KeyError, TypeError):
            pass  # unreadable or older file: count again
    logger.info("Counting class pixels of the training list %s for TRAIN.class_weight_rule %s",
                cfg.DATASET.list_train, cfg.TRAIN.class_weight_rule)
    return class_statistics(cfg.DATASET.list_train, cfg.DATASET.root_dataset, label_format(cfg),
                            int(cfg.DATASET.num_class), loader_workers(cfg.TRAIN.workers) or 1)


def _log_weights(weights: Sequence[float], how: str, cfg: CfgNode,
                 stats: ClassStatistics | None) -> None:
    names = class_names(cfg)
    rows = []
    for k, w in enumerate(weights):
        share = ""
        if stats is not None:
            total = max(int(stats.pixels.sum()), 1)
            share = f" ({stats.pixels[k] / total * 100:.2f}% of pixels)"
        rows.append(f"  {k:>3} {names.get(k, f'class_{k}')}: {w:.4g}{share}")
    logger.info("Class weights of the loss (%s):\n%s\nas a config value: TRAIN.class_weights "
                "\"%s\"", how, "\n".join(rows), format_weights(weights))


def class_weights(cfg: CfgNode, is_main: bool = True) -> torch.Tensor | None:
    """The loss weights of the classes (float32, ``DATASET.num_class``), or None
    when training is unweighted. Rank 0 computes and logs them (and writes
    ``DIR/class_weights.json`` for a rule); every rank gets the same numbers."""
    given, rule = list(cfg.TRAIN.class_weights), str(cfg.TRAIN.class_weight_rule)
    if not given and not rule:
        return None
    weights = None
    if is_main:
        if given:
            weights = [float(w) for w in given]
            _log_weights(weights, "TRAIN.class_weights", cfg, None)
        else:
            stats = _statistics(cfg)
            weights = stats.weights(rule).tolist()
            record = {"rule": rule, "weights": weights, "num_samples": stats.num_samples,
                      "pixels": stats.pixels.tolist(), "present": stats.present.tolist(),
                      "images": stats.images.tolist(), "source": _source(cfg)}
            atomic_write_text(json.dumps(record, indent=1) + "\n",
                              os.path.join(cfg.DIR, WEIGHTS_FILE))
            _log_weights(weights, f"TRAIN.class_weight_rule {rule} over {stats.num_samples} "
                         f"training masks", cfg, stats)
    weights = D.all_gather_objects(weights)[0]
    return torch.tensor(weights, dtype=torch.float32)


def make_criterion(weights: torch.Tensor | None) -> nn.NLLLoss:
    """The original's ``NLLLoss(ignore_index=-1)``, with ``weight=weights`` when given
    (each pixel's loss times its class's weight, the mean taken over those weights)."""
    return nn.NLLLoss(weight=weights, ignore_index=-1)


def build_criterion(cfg: CfgNode, weights: torch.Tensor | None) -> nn.Module:
    """The loss of ``TRAIN.loss`` with class weights ``weights``: exactly
    :func:`make_criterion` for the original's loss, else the registered losses'
    weighted sum (:func:`mit_semseg.training.losses.build_loss`)."""
    t = cfg.TRAIN
    spec = str(t.loss)
    if is_plain_cross_entropy(spec):
        return make_criterion(weights)
    return build_loss(spec, LossOptions(class_weights=weights, ohem_thresh=float(t.ohem_thresh),
                                        ohem_min_kept=int(t.ohem_min_kept),
                                        focal_gamma=float(t.focal_gamma)))
