"""Class statistics of an odgt list: pixels per class, the images that show each
class, and loss weights from them (``TRAIN.class_weight_rule``); plus the
reading every check of a list shares (odgt entries, one mask's pixel counts,
samples in parallel processes).

Nothing here prints: ``progress`` callbacks report how far a reading is, and
the commands draw the bars.
"""
from __future__ import annotations

import multiprocessing
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from ..config.schema import CLASS_WEIGHT_RULES
from .datasets import read_odgt_lines
from .io import DatasetError, LabelFormat, UnknownColorsError, read_annotation

__all__ = ["Progress", "SampleResult", "read_mask", "map_samples", "read_odgt_lists",
           "present_pixels", "CLASS_WEIGHT_RULES", "class_weights_from_counts", "format_weights",
           "ClassStatistics", "class_statistics"]

# progress(done, total): called as samples are read
Progress = Callable[[int, int], None]




def class_weights_from_counts(pixels: Any, present: Any, rule: str) -> np.ndarray:
    """Loss weights of K classes (float64) by ``rule``, from ``pixels[k]`` (labeled
    pixels of class k in a list) and ``present[k]`` (labeled pixels of the images
    that contain class k):

    * ``median_frequency`` (Eigen & Fergus, ICCV 2015): ``freq_k = pixels[k] /
      present[k]``, ``w_k = median(freq) / freq_k``;
    * ``inverse``: ``w_k = 1 / (S * share_k)`` with ``share_k = pixels[k] /
      sum(pixels)`` over the S classes seen (1 for every class of a balanced list);
    * ``inverse_sqrt``: the square root of ``inverse``.

    A class with no pixel gets 1.0 (no pixel of it reaches the loss either).
    """
    pixels = np.asarray(pixels, np.float64)
    present = np.asarray(present, np.float64)
    if rule not in CLASS_WEIGHT_RULES:
        raise ValueError(f"class weight rule {rule!r} is not one of {list(CLASS_WEIGHT_RULES)}")
    weights = np.ones(len(pixels))
    seen = pixels > 0
    if not seen.any():
        return weights
    if rule == "median_frequency":
        freq = pixels[seen] / present[seen]
        weights[seen] = np.median(freq) / freq
    else:
        share = pixels[seen] / pixels[seen].sum()
        weights[seen] = 1.0 / (seen.sum() * share)
        if rule == "inverse_sqrt":
            weights[seen] = np.sqrt(weights[seen])
    return weights


def format_weights(weights: Sequence[float]) -> str:
    """``[w0, w1, ...]`` with 4 significant digits: a ``TRAIN.class_weights`` value."""
    return "[" + ", ".join(f"{float(w):.4g}" for w in weights) + "]"


@dataclass
class SampleResult:
    """What checking one odgt line found."""

    split: str
    where: str
    errors: list[str] = field(default_factory=list)
    size: tuple[int, int] | None = None  # image (width, height)
    pixels: np.ndarray | None = None  # per annotation value 0..num_class
    # colours of a colour-coded mask that are not in the class table: [((r, g, b), px)]
    unknown_colors: list | None = None
    unknown_message: str = ""  # the error naming them, for one mask
    seg_path: str = ""


def read_mask(res: SampleResult, seg_path: str, fmt: LabelFormat,
              num_class: int) -> np.ndarray | None:
    """The annotation (0 = unlabeled), its per-value pixel counts in ``res.pixels``;
    None and the problem recorded in ``res`` when it cannot be read."""
    res.seg_path = seg_path
    try:
        segm = read_annotation(seg_path, num_class, fmt)
    except UnknownColorsError as exc:
        res.unknown_colors = exc.colors
        res.unknown_message = str(exc)
        return None
    except DatasetError as exc:
        res.errors.append(str(exc))
        return None
    res.pixels = np.bincount(segm.reshape(-1).astype(np.int64), minlength=num_class + 1)
    return segm


def present_pixels(pixels: np.ndarray) -> np.ndarray:
    """Per value 0..K: the image's labeled pixels where the value occurs, else 0."""
    return np.where(pixels > 0, pixels[1:].sum(), 0)


def _count_mask(task: tuple[str, str, dict, str, LabelFormat, int]) -> SampleResult:
    split, where, rec, root, fmt, num_class = task
    res = SampleResult(split, where)
    read_mask(res, os.path.join(root, rec["fpath_segm"]), fmt, num_class)
    return res


def map_samples(fn: Callable[[Any], SampleResult], tasks: list, workers: int,
                progress: Progress | None = None) -> list[SampleResult]:
    """``fn`` over ``tasks`` in ``workers`` processes (0: one per core; 1 or few
    tasks: in this process), results in order; ``progress(done, total)`` after
    each task (and once with 0 first)."""
    workers = workers or (os.cpu_count() or 1)
    results: list[SampleResult] = []
    if progress is not None:
        progress(0, len(tasks))
    if workers > 1 and len(tasks) > 1:
        with multiprocessing.get_context("spawn").Pool(min(workers, len(tasks))) as pool:
            for res in pool.imap(fn, tasks, chunksize=4):
                results.append(res)
                if progress is not None:
                    progress(len(results), len(tasks))
    else:
        for task in tasks:
            results.append(fn(task))
            if progress is not None:
                progress(len(results), len(tasks))
    return results


def read_odgt_lists(lists: dict[str, str]) -> tuple[list[tuple[str, str, dict]], list[str]]:
    """Parsed ``(split, where, record)`` entries of every list (split name -> odgt
    path), and the problems found (missing files, malformed lines, empty lists)."""
    entries, errors = [], []
    for split, path in lists.items():
        if not os.path.isfile(path):
            errors.append(f"{path}: odgt file not found ({split} list)")
            continue
        found = 0
        for where, rec, error in read_odgt_lines(path, strict_utf8=False):
            if error is not None:
                errors.append(error)
                continue
            missing = [k for k in ("fpath_img", "fpath_segm", "width", "height")
                       if not isinstance(rec, dict) or k not in rec]
            if missing:
                errors.append(f"{where}: malformed odgt entry (missing {', '.join(missing)})")
                continue
            entries.append((split, where, rec))
            found += 1
        if not found:
            errors.append(f"{path}: no samples ({split} list)")
    return entries, errors


@dataclass
class ClassStatistics:
    """Labeled pixels per class of an odgt list (0-based classes)."""

    pixels: np.ndarray  # K: pixels of class k
    present: np.ndarray  # K: labeled pixels of the images that contain class k
    images: np.ndarray  # K: images that contain class k
    num_samples: int

    def weights(self, rule: str) -> np.ndarray:
        """``class_weights_from_counts`` of these counts."""
        return class_weights_from_counts(self.pixels, self.present, rule)


def class_statistics(odgt: str, root: str, fmt: LabelFormat, num_class: int, workers: int = 0,
                     progress: Progress | None = None) -> ClassStatistics:
    """Read every mask of ``odgt`` (``workers`` processes, 0: one per core) and count
    the labeled pixels per class. Raises DatasetError naming the list, the line
    and the mask at the first unreadable one (``datatools check`` lists them all)."""
    entries, errors = read_odgt_lists({"list": odgt})
    tasks = [(split, where, rec, root, fmt, num_class) for split, where, rec in entries]
    results = map_samples(_count_mask, tasks, workers if len(tasks) > 16 else 1, progress)
    for res in results:
        errors += [f"{res.where}: {e}" for e in res.errors + [res.unknown_message] if e]
    if errors:
        raise DatasetError(f"{errors[0]} (python -m mit_semseg datatools check lists every "
                           f"problem)")
    pixels = np.zeros(num_class + 1, np.int64)
    present = np.zeros(num_class + 1, np.int64)
    images = np.zeros(num_class + 1, np.int64)
    for res in results:
        pixels += res.pixels
        present += present_pixels(res.pixels)
        images += res.pixels > 0
    return ClassStatistics(pixels[1:], present[1:], images[1:], len(results))
