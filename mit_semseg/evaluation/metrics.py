"""Segmentation metrics from a confusion matrix.

``SegmentationMetrics(num_class)`` accumulates a ``num_class x num_class``
confusion matrix (rows: ground truth, columns: prediction) over the labeled
pixels of every ``update(pred, label)`` call. Counts are int64, so results do
not depend on the order in which images or processes are merged: splitting a
set over processes and ``merge``-ing (or ``all_reduce``-ing) the parts gives
exactly the numbers of one process.

Where they overlap, results equal the original toolkit's eval.py:

* per-class intersection / union: ``intersectionAndUnion`` summed over
  the set (predictions on unlabeled pixels are not counted);
* ``iou = intersection / (union + 1e-10)`` and ``mean_iou = iou.mean()`` over
  all ``num_class`` classes (a class absent from both labels and predictions
  counts as IoU 0, as in the original);
* ``pixel_accuracy``: correct / labeled pixels (the original's pixel-weighted
  average of per-image ``accuracy``; equal up to its 1e-10 guard).

Added: ``class_accuracy`` (recall per class), ``mean_class_accuracy`` (mean
over classes that occur in the labels) and ``frequency_weighted_iou``.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch

__all__ = ["SegmentationMetrics", "confusion_counts", "accuracy", "intersectionAndUnion"]

_EPS = 1e-10  # the original's guard against empty unions


def _flat_int64(x: Any) -> np.ndarray | torch.Tensor:
    if torch.is_tensor(x):
        return x.detach().reshape(-1).to(torch.int64)
    return np.asarray(x).reshape(-1).astype(np.int64, copy=False)


def confusion_counts(pred: Any, label: Any, num_class: int) -> np.ndarray | None:
    """``num_class x num_class`` int64 counts (rows: label, columns: prediction)
    over the pixels with ``label >= 0``, or None where this fast path does not
    apply; the caller then counts the straightforward way (which also raises
    the right errors).

    One fused pass builds ``(label + 1) * k + pred`` (unlabeled pixels land in
    a row that is dropped, so no masking), then one
    ``bincount``. Applies when ``pred`` and ``label`` are integer numpy arrays
    or tensors of the same number of elements, every prediction (labeled or
    not) is in ``0..k-1`` and every label in ``-1..k-1``.
    """
    k = int(num_class)
    for x in (pred, label):
        if not torch.is_tensor(x) and not (isinstance(x, np.ndarray) and x.flags.writeable):
            return None  # lists, read-only arrays (torch would warn): the slow path
    try:
        p = pred if torch.is_tensor(pred) else torch.from_numpy(np.ascontiguousarray(pred))
        t = label if torch.is_tensor(label) else torch.from_numpy(np.ascontiguousarray(label))
    except (TypeError, ValueError):
        return None
    if (p.dtype.is_floating_point or t.dtype.is_floating_point or p.dtype == torch.bool
            or t.dtype == torch.bool or p.is_complex() or t.is_complex()
            or p.numel() != t.numel() or p.numel() == 0 or p.device != t.device):
        return None
    p = p.reshape(-1).to(torch.int64)
    t = t.reshape(-1).to(torch.int64)
    lo, hi = torch.aminmax(p)
    if int(lo) < 0 or int(hi) >= k:
        return None
    idx = torch.add(p, t, alpha=k)
    idx.add_(k)
    try:
        counts = torch.bincount(idx, minlength=(k + 1) * k)
    except RuntimeError:  # a label below -1
        return None
    if counts.numel() != (k + 1) * k:  # a label >= k
        return None
    return counts[k:].view(k, k).cpu().numpy()


# ----------------------------------------------------------------------------- per image (the original's helpers)

def accuracy(preds: np.ndarray, label: np.ndarray) -> tuple[float, int]:
    """Pixel accuracy over labeled pixels (label >= 0), and their count."""
    valid = label >= 0
    valid_sum = int(valid.sum())
    correct = int(np.logical_and(valid, preds == label).sum())
    return correct / (valid_sum + 1e-10), valid_sum


def intersectionAndUnion(imPred: np.ndarray, imLab: np.ndarray,
                         numClass: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-class intersection and union areas (classes 0..numClass-1).

    Pixels with a negative label are unlabeled: predictions there are not
    counted. Equals the original's histogram-based computation.
    """
    pred = np.asarray(imPred).astype(np.int64) + 1
    lab = np.asarray(imLab).astype(np.int64) + 1
    pred = pred * (lab > 0)
    inter = pred * (pred == lab)
    area_inter = _class_hist(inter, numClass)
    area_pred = _class_hist(pred, numClass)
    area_lab = _class_hist(lab, numClass)
    return area_inter, area_pred + area_lab - area_inter


def _class_hist(values: np.ndarray, num_class: int) -> np.ndarray:
    # histogram of 1..num_class, bins as the original's np.histogram(range=(1, numClass))
    hist, _ = np.histogram(values, bins=num_class, range=(1, num_class))
    return hist


# ----------------------------------------------------------------------------- over a set

class SegmentationMetrics:
    """Confusion-matrix accumulator for ``num_class`` classes (labels 0..num_class-1,
    negative labels = unlabeled and ignored)."""

    def __init__(self, num_class: int) -> None:
        if int(num_class) < 1:
            raise ValueError(f"num_class must be >= 1, got {num_class}")
        self.num_class = int(num_class)
        self.confusion = np.zeros((self.num_class, self.num_class), dtype=np.int64)
        self.num_images = 0

    # ----------------------------------------------------------------- accumulate
    def update(self, pred: Any, label: Any) -> None:
        """Add one prediction / label map pair (numpy arrays or tensors of equal shape).

        Pixels with ``label < 0`` are skipped. A label or prediction outside
        ``0..num_class-1`` (on a labeled pixel) raises ``ValueError``.
        """
        p, t = _flat_int64(pred), _flat_int64(label)
        if tuple(p.shape) != tuple(t.shape):
            raise ValueError(f"prediction has {tuple(p.shape)[0]} pixels but label has "
                             f"{tuple(t.shape)[0]} (shapes must match)")
        k = self.num_class
        fast = confusion_counts(p, t, k)  # one pass + bincount; None: count below
        if fast is not None:
            self.confusion += fast
            self.num_images += 1
            return
        if torch.is_tensor(p) or torch.is_tensor(t):
            # tensors (e.g. on the GPU): count there, bring back k*k numbers
            p = torch.as_tensor(p)
            t = torch.as_tensor(t, device=p.device)
            keep = t >= 0
            p, t = p[keep], t[keep]
            if t.numel():
                self._check_range(int(t.max()), int(p.min()), int(p.max()))
            counts = torch.bincount(t * k + p, minlength=k * k).cpu().numpy()
        else:
            keep = t >= 0
            p, t = p[keep], t[keep]
            if t.size:
                self._check_range(int(t.max()), int(p.min()), int(p.max()))
            counts = np.bincount(t * k + p, minlength=k * k)
        self.confusion += counts.reshape(k, k).astype(np.int64, copy=False)
        self.num_images += 1

    def _check_range(self, label_max: int, pred_min: int, pred_max: int) -> None:
        if label_max >= self.num_class:
            raise ValueError(f"label value {label_max} is outside 0..{self.num_class - 1} "
                             f"(num_class={self.num_class})")
        if pred_min < 0 or pred_max >= self.num_class:
            bad = pred_min if pred_min < 0 else pred_max
            raise ValueError(f"prediction value {bad} is outside 0..{self.num_class - 1} "
                             f"(num_class={self.num_class})")

    def merge(self, other: "SegmentationMetrics") -> "SegmentationMetrics":
        """Add ``other``'s counts into this accumulator (in place); returns self."""
        if other.num_class != self.num_class:
            raise ValueError(f"cannot merge metrics for {other.num_class} classes into "
                             f"metrics for {self.num_class}")
        self.confusion += other.confusion
        self.num_images += other.num_images
        return self

    def all_reduce(self) -> "SegmentationMetrics":
        """Sum the counts over all torch.distributed ranks (in place); returns self.

        A no-op when torch.distributed is not initialised.
        """
        dist = torch.distributed
        if not (dist.is_available() and dist.is_initialized()):
            return self
        device = torch.device("cuda", torch.cuda.current_device()) \
            if dist.get_backend() == "nccl" else torch.device("cpu")
        flat = torch.from_numpy(np.append(self.confusion.reshape(-1), self.num_images)).to(device)
        dist.all_reduce(flat)
        flat = flat.cpu().numpy()
        self.confusion = flat[:-1].reshape(self.num_class, self.num_class).copy()
        self.num_images = int(flat[-1])
        return self

    # ------------------------------------------------------------------- results
    @property
    def intersection(self) -> np.ndarray:
        """Per-class intersection areas (true positives), int64."""
        return np.diag(self.confusion).copy()

    @property
    def union(self) -> np.ndarray:
        """Per-class union areas: labeled-as-k + predicted-as-k (on labeled pixels) - both."""
        return self.confusion.sum(0) + self.confusion.sum(1) - np.diag(self.confusion)

    @property
    def labeled(self) -> np.ndarray:
        """Labeled pixels per ground-truth class."""
        return self.confusion.sum(1)

    @property
    def iou(self) -> np.ndarray:
        """Per-class IoU: intersection / (union + 1e-10), as the original."""
        return self.intersection / (self.union + _EPS)

    @property
    def mean_iou(self) -> float:
        """Mean of ``iou`` over all classes (the original's mIoU)."""
        return float(self.iou.mean())

    @property
    def pixel_accuracy(self) -> float:
        """Correctly predicted / labeled pixels over the whole set."""
        return float(np.diag(self.confusion).sum() / (self.confusion.sum() + _EPS))

    @property
    def class_accuracy(self) -> np.ndarray:
        """Per-class accuracy (recall): correct / labeled pixels of that class; NaN if none."""
        labeled = self.labeled
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(labeled > 0, np.diag(self.confusion) / np.maximum(labeled, 1), np.nan)

    @property
    def mean_class_accuracy(self) -> float:
        """Mean of ``class_accuracy`` over classes present in the labels (0 if none)."""
        acc = self.class_accuracy
        present = ~np.isnan(acc)
        return float(acc[present].mean()) if present.any() else 0.0

    @property
    def frequency_weighted_iou(self) -> float:
        """Sum over classes of (labeled share of the class) x IoU."""
        total = self.confusion.sum()
        if total == 0:
            return 0.0
        return float((self.labeled / total * self.iou).sum())

    def summary(self, names: Mapping[int, str] | None = None) -> dict[str, Any]:
        """All results as plain JSON-serialisable values (per-class list included)."""
        names = names or {}
        acc = self.class_accuracy
        per_class = [
            {"index": k, "name": names.get(k, f"class_{k}"),
             "iou": float(self.iou[k]),
             "accuracy": None if np.isnan(acc[k]) else float(acc[k]),
             "intersection": int(self.intersection[k]), "union": int(self.union[k]),
             "labeled_pixels": int(self.labeled[k])}
            for k in range(self.num_class)
        ]
        return {
            "num_images": self.num_images,
            "num_class": self.num_class,
            "mean_iou": self.mean_iou,
            "pixel_accuracy": self.pixel_accuracy,
            "mean_class_accuracy": self.mean_class_accuracy,
            "frequency_weighted_iou": self.frequency_weighted_iou,
            "labeled_pixels": int(self.confusion.sum()),
            "per_class": per_class,
        }
