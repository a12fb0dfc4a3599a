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
over classes that occur in the labels), ``frequency_weighted_iou``,
``precision`` and ``f1`` (= Dice) per class, ``mean_f1`` / ``mean_dice`` (mean
over classes that occur in the labels or the predictions), ``overall_score``
(ADE20K's "overall score": the mean of mIoU and pixel accuracy) and
``pixel_share`` per class.

Optional per-image bookkeeping (``SegmentationMetrics(k, per_image=True)``,
``image_stats``): each image's mIoU over the classes present in it, its pixel
accuracy, the number of images containing each class and, with
``boundary=True``, boundary IoU per class (a band of width
``dilation_ratio`` x image diagonal inside each mask's contour, as defined by
Cheng et al., "Boundary IoU", CVPR 2021). The default ``update`` path does none
of this.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import numpy as np
import torch

__all__ = ["SegmentationMetrics", "confusion_counts", "ImageStats", "image_stats",
           "boundary_band", "boundary_width", "accuracy", "intersectionAndUnion"]

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


# ============================================================================ the original's per-image helpers

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


# ============================================================================ per image

def boundary_width(height: int, width: int, dilation_ratio: float = 0.02) -> int:
    """Boundary band width in pixels: ``dilation_ratio`` x the image diagonal, rounded,
    at least 1."""
    return max(1, int(round(dilation_ratio * math.hypot(height, width))))


def boundary_band(mask: np.ndarray, width: int) -> np.ndarray:
    """The pixels of boolean 2-D ``mask`` within ``width`` pixels (chessboard
    distance) of a pixel outside it; outside the image counts as outside the mask.

    Equals ``mask`` minus its erosion by a 3x3 square iterated ``width`` times, done
    as one separable (2 width + 1)-square minimum filter.
    """
    from scipy import ndimage

    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"boundary_band expects a 2-D mask, got shape {mask.shape}")
    if not mask.any():
        return mask.copy()
    eroded = ndimage.minimum_filter(mask.view(np.uint8), size=2 * int(width) + 1,
                                    mode="constant", cval=0)
    return mask & (eroded == 0)


@dataclasses.dataclass(frozen=True)
class ImageStats:
    """One image's results (see ``image_stats``).

    ``mean_iou``: mean IoU over the classes present in this image's labels or
    predictions (on labeled pixels); NaN if it has no labeled pixel.
    ``pixel_accuracy``: correct / labeled pixels; NaN if none.
    ``classes``: the classes occurring in the labels (sorted).
    ``boundary_intersection`` / ``boundary_union``: per-class boundary-band
    counts when boundary IoU was asked for, else None.
    """

    name: str | None
    labeled_pixels: int
    correct_pixels: int
    mean_iou: float
    pixel_accuracy: float
    classes: tuple[int, ...]
    boundary_intersection: np.ndarray | None = None
    boundary_union: np.ndarray | None = None

    def to_json(self) -> dict[str, Any]:
        """The JSON record (undefined values as None; no class list, no boundary counts)."""
        return {"name": self.name,
                "mean_iou": _json_float(self.mean_iou),
                "pixel_accuracy": _json_float(self.pixel_accuracy),
                "labeled_pixels": self.labeled_pixels}


def _json_float(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def _to_numpy_2d(x: Any) -> np.ndarray:
    arr = x.detach().cpu().numpy() if torch.is_tensor(x) else np.asarray(x)
    if arr.ndim != 2:
        raise ValueError(f"boundary IoU needs 2-D label maps, got shape {arr.shape}")
    return arr.astype(np.int64, copy=False)


def _class_bands(labels: np.ndarray, width: int) -> np.ndarray:
    """For every pixel, whether it lies in the boundary band of its own value's mask:
    some pixel within ``width`` (chessboard distance) has another value or is
    outside the image. One min and one max filter serve all classes at once."""
    from scipy import ndimage

    size = 2 * width + 1
    lo = ndimage.minimum_filter(labels, size=size, mode="constant", cval=-2)
    hi = ndimage.maximum_filter(labels, size=size, mode="constant", cval=-2)
    return lo != hi


def _boundary_counts(pred: Any, label: Any, num_class: int,
                     dilation_ratio: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-class |G_d & P_d| and |G_d | P_d| over the labeled pixels, where G_d / P_d
    are the boundary bands (``boundary_band``) of the class's label / prediction
    masks; unlabeled pixels belong to no class mask."""
    p, t = _to_numpy_2d(pred), _to_numpy_2d(label)
    if p.shape != t.shape:
        raise ValueError(f"prediction shape {p.shape} != label shape {t.shape}")
    k = num_class
    width = boundary_width(t.shape[0], t.shape[1], dilation_ratio)
    # -1: unlabeled, k: a prediction outside the classes (possible on unlabeled pixels)
    dtype = np.int16 if k < 2 ** 15 - 1 else np.int64
    t = np.clip(t, -1, k).astype(dtype)
    p = np.clip(p, -1, k).astype(dtype)
    labeled = t >= 0
    g = _class_bands(t, width) & labeled
    q = _class_bands(p, width) & labeled
    both = g & q & (t == p)
    inter = np.bincount(t[both], minlength=k)[:k].astype(np.int64)
    union = (np.bincount(t[g], minlength=k)[:k] + np.bincount(p[q], minlength=k)[:k]
             - inter).astype(np.int64)
    return inter, union


def _image_stats(pred: Any, label: Any, num_class: int, name: str | None, boundary: bool,
                 dilation_ratio: float) -> tuple[ImageStats, np.ndarray]:
    part = SegmentationMetrics(num_class)
    part.update(pred, label)  # validates values and shapes
    conf = part.confusion
    tp = np.diag(conf)
    union = conf.sum(0) + conf.sum(1) - tp
    present = union > 0
    labeled = int(conf.sum())
    correct = int(tp.sum())
    miou = float((tp[present] / union[present]).mean()) if present.any() else math.nan
    acc = correct / labeled if labeled else math.nan
    b_inter = b_union = None
    if boundary:
        b_inter, b_union = _boundary_counts(pred, label, num_class, dilation_ratio)
    stats = ImageStats(name=name, labeled_pixels=labeled, correct_pixels=correct,
                       mean_iou=miou, pixel_accuracy=acc,
                       classes=tuple(int(c) for c in np.flatnonzero(conf.sum(1))),
                       boundary_intersection=b_inter, boundary_union=b_union)
    return stats, conf


def image_stats(pred: Any, label: Any, num_class: int, *, name: str | None = None,
                boundary: bool = False, dilation_ratio: float = 0.02) -> ImageStats:
    """One image's ``ImageStats`` from its prediction and label maps (``label < 0``:
    unlabeled, not counted). ``boundary=True`` also counts boundary-IoU bands of
    width ``boundary_width(h, w, dilation_ratio)`` (2-D maps needed): both bands
    are taken on the full maps (unlabeled pixels are outside every class mask);
    only labeled pixels are counted, as in the confusion matrix."""
    return _image_stats(pred, label, int(num_class), name, boundary, dilation_ratio)[0]


# ============================================================================ over a set

class SegmentationMetrics:
    """Confusion-matrix accumulator for ``num_class`` classes (labels 0..num_class-1,
    negative labels = unlabeled and ignored).

    ``per_image=True`` also keeps one ``ImageStats`` per ``update`` (in
    ``images``, without boundary counts) and counts the images containing each
    class (``image_count``); ``boundary=True`` (implies ``per_image``) sums
    boundary-IoU band counts per class over the set (``boundary_intersection``,
    ``boundary_union``), with bands ``dilation_ratio`` x the image diagonal wide.
    """

    def __init__(self, num_class: int, *, per_image: bool = False, boundary: bool = False,
                 dilation_ratio: float = 0.02) -> None:
        if int(num_class) < 1:
            raise ValueError(f"num_class must be >= 1, got {num_class}")
        self.num_class = int(num_class)
        self.confusion = np.zeros((self.num_class, self.num_class), dtype=np.int64)
        self.num_images = 0
        self.per_image = bool(per_image or boundary)
        self.boundary = bool(boundary)
        self.dilation_ratio = float(dilation_ratio)
        self.images: list[ImageStats] = []
        self.image_count = np.zeros(self.num_class, dtype=np.int64)
        self.boundary_intersection = np.zeros(self.num_class, dtype=np.int64)
        self.boundary_union = np.zeros(self.num_class, dtype=np.int64)

    # ----------------------------------------------------------------- accumulate
    def update(self, pred: Any, label: Any, name: str | None = None) -> None:
        """Add one prediction / label map pair (numpy arrays or tensors of equal shape).

        Pixels with ``label < 0`` are skipped. A label or prediction outside
        ``0..num_class-1`` (on a labeled pixel) raises ``ValueError``. ``name``
        labels the image's ``ImageStats`` when per-image results are kept.
        """
        if self.per_image:
            self._update_image(pred, label, name)
            return
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

    def _update_image(self, pred: Any, label: Any, name: str | None) -> ImageStats:
        stats, conf = _image_stats(pred, label, self.num_class, name, self.boundary,
                                   self.dilation_ratio)
        self.confusion += conf
        self.num_images += 1
        self.image_count[list(stats.classes)] += 1
        if self.boundary:
            self.boundary_intersection += stats.boundary_intersection
            self.boundary_union += stats.boundary_union
        self.images.append(dataclasses.replace(stats, boundary_intersection=None,
                                               boundary_union=None))
        return stats

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
        if self._extras() != other._extras():
            raise ValueError(f"cannot merge metrics with per-image settings {other._extras()} "
                             f"into metrics with {self._extras()} (per_image, boundary, "
                             f"dilation_ratio)")
        self.confusion += other.confusion
        self.num_images += other.num_images
        if self.per_image:
            self.images.extend(other.images)
            self.image_count += other.image_count
            self.boundary_intersection += other.boundary_intersection
            self.boundary_union += other.boundary_union
        return self

    def _extras(self) -> tuple[bool, bool, float | None]:
        return self.per_image, self.boundary, self.dilation_ratio if self.boundary else None

    def all_reduce(self) -> "SegmentationMetrics":
        """Sum the counts over all torch.distributed ranks (in place); returns self.

        A no-op when torch.distributed is not initialised.
        """
        dist = torch.distributed
        if not (dist.is_available() and dist.is_initialized()):
            return self
        device = torch.device("cuda", torch.cuda.current_device()) \
            if dist.get_backend() == "nccl" else torch.device("cpu")
        k = self.num_class
        parts = [self.confusion.reshape(-1), [self.num_images]]
        if self.per_image:
            parts += [self.image_count, self.boundary_intersection, self.boundary_union]
        flat = torch.from_numpy(np.concatenate(parts).astype(np.int64)).to(device)
        dist.all_reduce(flat)
        flat = flat.cpu().numpy()
        self.confusion = flat[:k * k].reshape(k, k).copy()
        self.num_images = int(flat[k * k])
        if self.per_image:
            rest = flat[k * k + 1:].reshape(3, k).copy()
            self.image_count, self.boundary_intersection, self.boundary_union = rest
            gathered: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, self.images)
            self.images = [s for part in gathered for s in part]
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

    @property
    def predicted(self) -> np.ndarray:
        """Labeled pixels predicted as each class."""
        return self.confusion.sum(0)

    @property
    def precision(self) -> np.ndarray:
        """Per-class precision: correct / labeled pixels predicted as the class; NaN
        for a class never predicted on a labeled pixel."""
        predicted = self.predicted
        return np.where(predicted > 0, np.diag(self.confusion) / np.maximum(predicted, 1), np.nan)

    @property
    def f1(self) -> np.ndarray:
        """Per-class F1 score = Dice coefficient: 2 correct / (labeled + predicted
        pixels of the class); NaN for a class absent from both labels and predictions
        (0 for a class present in one of them only)."""
        both = self.labeled + self.predicted
        return np.where(both > 0, 2 * np.diag(self.confusion) / np.maximum(both, 1), np.nan)

    @property
    def mean_f1(self) -> float:
        """Mean of ``f1`` over the classes present in the labels or the predictions
        (those with a defined F1); 0 if none. Unlike ``mean_iou``, absent classes do
        not count as 0."""
        f1 = self.f1
        present = ~np.isnan(f1)
        return float(f1[present].mean()) if present.any() else 0.0

    @property
    def mean_dice(self) -> float:
        """Same as ``mean_f1`` (Dice = F1)."""
        return self.mean_f1

    @property
    def overall_score(self) -> float:
        """ADE20K's overall score: (``mean_iou`` + ``pixel_accuracy``) / 2."""
        return (self.mean_iou + self.pixel_accuracy) / 2

    @property
    def pixel_share(self) -> np.ndarray:
        """Each class's share of the labeled pixels (ground truth); zeros if none."""
        total = self.confusion.sum()
        return self.labeled / total if total else np.zeros(self.num_class)

    @property
    def boundary_iou(self) -> np.ndarray:
        """Per-class boundary IoU over the set (summed band intersections / unions);
        NaN where the class's bands are empty or boundary counts were not kept."""
        u = self.boundary_union
        if not self.boundary:
            return np.full(self.num_class, np.nan)
        return np.where(u > 0, self.boundary_intersection / np.maximum(u, 1), np.nan)

    @property
    def mean_boundary_iou(self) -> float | None:
        """Mean of ``boundary_iou`` over the classes with a non-empty band union; None
        when boundary counts are not kept, 0 if no class has one."""
        if not self.boundary:
            return None
        b = self.boundary_iou
        present = ~np.isnan(b)
        return float(b[present].mean()) if present.any() else 0.0

    def summary(self, names: Mapping[int, str] | None = None) -> dict[str, Any]:
        """All results as plain JSON-serialisable values (per-class list included).

        Per class: ``index``, ``name``, ``iou``, ``accuracy`` (recall),
        ``intersection``, ``union``, ``labeled_pixels``, ``predicted_pixels``,
        ``precision``, ``f1`` (= Dice), ``pixel_share``, ``images`` (images whose
        labels contain the class) and ``boundary_iou``. Undefined values are None:
        ``accuracy`` of a class absent from the labels, ``precision`` of a class
        never predicted, ``f1`` of a class absent from both, ``images`` without
        per-image results, ``boundary_iou`` without boundary counts or with an
        empty band union.

        Set: ``num_images``, ``num_class``, ``mean_iou``, ``pixel_accuracy``,
        ``mean_class_accuracy``, ``frequency_weighted_iou``, ``labeled_pixels``,
        ``mean_f1`` = ``mean_dice``, ``overall_score``, ``mean_boundary_iou`` and
        ``boundary_dilation_ratio`` (None without boundary counts), ``per_image``
        (``ImageStats.to_json`` per image, None without per-image results) and
        ``confusion`` (list of rows of counts; rows: ground truth).
        """
        names = names or {}
        acc, prec, f1 = self.class_accuracy, self.precision, self.f1
        share, biou, predicted = self.pixel_share, self.boundary_iou, self.predicted
        per_class = [
            {"index": k, "name": names.get(k, f"class_{k}"),
             "iou": float(self.iou[k]),
             "accuracy": None if np.isnan(acc[k]) else float(acc[k]),
             "intersection": int(self.intersection[k]), "union": int(self.union[k]),
             "labeled_pixels": int(self.labeled[k]),
             "predicted_pixels": int(predicted[k]),
             "precision": None if np.isnan(prec[k]) else float(prec[k]),
             "f1": None if np.isnan(f1[k]) else float(f1[k]),
             "pixel_share": float(share[k]),
             "images": int(self.image_count[k]) if self.per_image else None,
             "boundary_iou": None if np.isnan(biou[k]) else float(biou[k])}
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
            "mean_f1": self.mean_f1,
            "mean_dice": self.mean_dice,
            "overall_score": self.overall_score,
            "mean_boundary_iou": self.mean_boundary_iou,
            "boundary_dilation_ratio": self.dilation_ratio if self.boundary else None,
            "per_image": [s.to_json() for s in self.images] if self.per_image else None,
            "confusion": self.confusion.tolist(),
        }
