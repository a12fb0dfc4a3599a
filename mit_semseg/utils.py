"""Small helpers kept from the original API: meters, colours, metrics, devices,
file search, logging, and the dataset's class colours and names."""
from __future__ import annotations

import csv
import functools
import logging
import os
import re
import sys
from functools import lru_cache
from typing import Any, Sequence

import numpy as np

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


# ----------------------------------------------------------------------------- logging

def setup_logger(distributed_rank: int = 0, filename: str | None = "log.txt") -> logging.Logger:
    """The "Logger" logger: stdout, plus ``filename`` when given; silent on rank > 0.

    Calling it again replaces the handlers it added before (no duplicate lines).
    """
    logger = logging.getLogger("Logger")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    for h in list(logger.handlers):
        logger.removeHandler(h)
        h.close()
    if distributed_rank > 0:
        logger.addHandler(logging.NullHandler())
        return logger
    fmt = logging.Formatter("[%(asctime)s %(levelname)s %(filename)s line %(lineno)d "
                            "%(process)d] %(message)s")
    handlers: list[logging.Handler] = [logging.StreamHandler(stream=sys.stdout)]
    if filename:
        folder = os.path.dirname(filename)
        if folder:
            os.makedirs(folder, exist_ok=True)
        handlers.append(logging.FileHandler(filename))
    for h in handlers:
        h.setFormatter(fmt)
        logger.addHandler(h)
    return logger


# ----------------------------------------------------------------------------- files

def find_recursive(root_dir: str, ext: str | Sequence[str] = ".jpg") -> list[str]:
    """Files under ``root_dir`` (recursively, sorted) whose name ends with ``ext``
    (a suffix or a sequence of them, e.g. ``IMAGE_EXTENSIONS``), compared
    case-insensitively. The default is the original's ``.jpg``."""
    exts = (ext,) if isinstance(ext, str) else tuple(ext)
    exts = tuple(e.lower() for e in exts)
    found = []
    for root, dirs, names in os.walk(root_dir):
        dirs.sort()
        found += [os.path.join(root, n) for n in sorted(names) if n.lower().endswith(exts)]
    return found


# ----------------------------------------------------------------------------- meters

class AverageMeter:
    """Running weighted average: ``update(val, weight)``; ``average()``, ``value()``."""

    def __init__(self) -> None:
        self.initialized = False
        self.val = self.avg = self.sum = self.count = None

    def initialize(self, val: float, weight: float) -> None:
        self.val, self.avg, self.sum, self.count = val, val, val * weight, weight
        self.initialized = True

    def update(self, val: float, weight: float = 1) -> None:
        if not self.initialized:
            self.initialize(val, weight)
        else:
            self.add(val, weight)

    def add(self, val: float, weight: float) -> None:
        self.val = val
        self.sum += val * weight
        self.count += weight
        self.avg = self.sum / self.count

    def value(self) -> float:
        return self.val

    def average(self) -> float:
        return self.avg


# ----------------------------------------------------------------------------- metrics

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


# ----------------------------------------------------------------------------- colours

def unique(ar: np.ndarray, return_index: bool = False, return_inverse: bool = False,
           return_counts: bool = False):
    """``np.unique`` (kept for the original's API)."""
    return np.unique(ar, return_index=return_index, return_inverse=return_inverse,
                     return_counts=return_counts)


def colorEncode(labelmap: np.ndarray, colors: np.ndarray, mode: str = "RGB") -> np.ndarray:
    """Colour a class-index map (H x W, 0-based; negative = black) with ``colors`` (K x 3)."""
    labelmap = np.asarray(labelmap).astype(np.int64)
    colors = np.asarray(colors, dtype=np.uint8)
    palette = np.concatenate([colors, np.zeros((1, 3), np.uint8)])  # last row: unlabeled
    index = np.where((labelmap >= 0) & (labelmap < len(colors)), labelmap, len(colors))
    rgb = palette[index]
    return rgb[:, :, ::-1] if mode == "BGR" else rgb


_ADE20K_TABLES = ("color150.mat", "color150.csv", "object150_info.csv")


@lru_cache(maxsize=None)
def _ade20k_file(name: str) -> str:
    """Path of one of the ADE20K tables shipped in ``data/`` (``_ADE20K_TABLES``)."""
    here = os.path.dirname(os.path.abspath(__file__))
    for folder in (os.path.join(here, "data"), os.path.join(os.path.dirname(here), "data")):
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(f"ADE20K table {name} is missing from the installed package "
                            f"(expected beside {', '.join(_ADE20K_TABLES)}); reinstall mit_semseg")


def ade20k_colors() -> np.ndarray:
    """The 150 ADE20K class colours, 150 x 3 uint8 (works from any directory).

    Read from ``data/color150.csv``, the same colours as the original's
    ``data/color150.mat`` (kept for code that loads it; the tests compare the
    two): reading the .mat needs scipy.io, about 0.25 s of a test.py run."""
    with open(_ade20k_file("color150.csv"), newline="") as fh:
        rows = sorted((int(r["Idx"]), r["R"], r["G"], r["B"]) for r in csv.DictReader(fh))
    if [r[0] for r in rows] != list(range(1, 151)):
        raise ValueError(f"{_ade20k_file('color150.csv')}: expected rows Idx 1..150")
    return np.array([r[1:] for r in rows], dtype=np.uint8)


def ade20k_names() -> dict[int, str]:
    """0-based class index -> short ADE20K name (first of the ';'-separated names)."""
    with open(_ade20k_file("object150_info.csv")) as fh:
        return {int(row["Idx"]) - 1: row["Name"].split(";")[0] for row in csv.DictReader(fh)}


def class_colors(num_class: Any) -> np.ndarray:
    """K x 3 uint8 class colours. ``num_class``: a count, or a config (the whole
    cfg or its DATASET node), whose ``DATASET.class_table`` then decides.
    Without a table: ADE20K's colours, then distinct generated ones beyond 150."""
    from .classes import class_table, generated_palette
    if isinstance(num_class, (int, np.integer)):
        return generated_palette(int(num_class))
    return class_table(num_class).colors


def class_names(num_class: Any) -> dict[int, str]:
    """0-based class index -> name. ``num_class``: a count (ADE20K names for 150
    classes, ``class_k`` otherwise), or a config whose ``DATASET.class_table``
    names the classes (see :mod:`mit_semseg.classes`)."""
    if isinstance(num_class, (int, np.integer)):
        if int(num_class) == 150:
            return ade20k_names()
        return {k: f"class_{k}" for k in range(int(num_class))}
    from .classes import class_table
    return class_table(num_class).name_dict()


# ----------------------------------------------------------------------------- loaders

def cpu_count() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def loader_workers(requested: int) -> int:
    """DataLoader worker processes to start: ``requested`` capped at :func:`cpu_count` (>= 0)."""
    return max(0, min(int(requested), cpu_count()))


# ----------------------------------------------------------------------------- process exit

def exit_now(code: int | None = 0) -> None:
    """End a command-line script with exit status ``code`` without the
    interpreter's teardown, which takes about 0.5 s once torch is loaded (its
    modules and extension state are dismantled one by one).

    Output is flushed and the atexit handlers run first (logging, multiprocessing
    children, tqdm), then ``os._exit``. Under a debugger, tracer or profiler
    (``sys.gettrace()`` / ``sys.getprofile()`` set, e.g. ``python -m cProfile``),
    or with ``MIT_SEMSEG_FAST_EXIT=0``, it is plain ``sys.exit(code)``.
    """
    if (sys.gettrace() is not None or sys.getprofile() is not None
            or os.environ.get("MIT_SEMSEG_FAST_EXIT", "1") == "0"):
        sys.exit(code)
    import atexit

    def _flush() -> None:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (AttributeError, OSError, ValueError):
                pass

    _flush()
    atexit._run_exitfuncs()
    _flush()
    os._exit(0 if code is None else int(code))


# ----------------------------------------------------------------------------- allocator

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3  # glibc <malloc.h>
_ALLOCATOR_TUNED: bool | None = None


def tune_allocator() -> bool:
    """Make glibc's malloc keep freed memory for reuse in this process.

    A training or inference step frees and re-allocates the same large
    activation buffers every time; with glibc's defaults most of them are
    mmap'ed and returned to the OS, so each step pays the page faults of
    touching them again (15-20% of a MobileNetV2 training step on 2 cores).
    This raises the mmap threshold to glibc's 32 MiB maximum and stops
    trimming the heap: resident memory stays near the peak instead of falling
    between steps, but the peak is not higher. Called by the command-line
    entry points (train, eval, eval_multipro, test, benchmark), not on import.

    A no-op returning False off glibc (macOS, Windows, musl) or when the
    environment variable ``MIT_SEMSEG_MALLOC`` is ``system``; True once tuned.
    """
    global _ALLOCATOR_TUNED
    if _ALLOCATOR_TUNED is not None:
        return _ALLOCATOR_TUNED
    _ALLOCATOR_TUNED = False
    if os.environ.get("MIT_SEMSEG_MALLOC", "").strip().lower() == "system":
        return False
    if not sys.platform.startswith("linux"):
        return False
    import ctypes
    import platform
    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = (libc.mallopt(_M_MMAP_THRESHOLD, 32 * 1024 * 1024) == 1
              and libc.mallopt(_M_TRIM_THRESHOLD, 2 ** 31 - 1) == 1
              and libc.mallopt(_M_TOP_PAD, 64 * 1024 * 1024) == 1)
    except (OSError, AttributeError):
        return False
    _ALLOCATOR_TUNED = bool(ok)
    return _ALLOCATOR_TUNED


def allocator_state() -> str:
    """One line for logs and benchmark headers: how malloc is set up."""
    if _ALLOCATOR_TUNED:
        return "glibc malloc tuned to keep freed memory (MIT_SEMSEG_MALLOC=system: off)"
    if os.environ.get("MIT_SEMSEG_MALLOC", "").strip().lower() == "system":
        return "system malloc defaults (MIT_SEMSEG_MALLOC=system)"
    return "system malloc defaults"


# ----------------------------------------------------------------------------- devices

class NotSupportedCliException(ValueError):
    """A device string that parse_devices does not understand."""


def process_range(xpu: str, inp: Sequence[str]) -> list[str]:
    """Device names for an inclusive id range in either order: ``('gpu', ('3', '1'))`` ->
    ``['gpu1', 'gpu2', 'gpu3']``."""
    lo, hi = sorted(int(g) for g in inp)
    return [f"{xpu}{i}" for i in range(lo, hi + 1)]


# (pattern, match groups -> device names), tried in order by parse_devices.
REGEX = [
    (re.compile(r"^cpu$"), lambda groups: ["cpu"]),
    (re.compile(r"^(?:gpu)?(\d+)$"), lambda groups: [f"gpu{groups[0]}"]),
    (re.compile(r"^(?:gpu)?(\d+)-(?:gpu)?(\d+)$"), functools.partial(process_range, "gpu")),
]


def parse_devices(input_devices: str) -> list[str]:
    """``'0-3'``, ``'0,2'``, ``'gpu1'``, ``'gpu0-gpu2'`` -> ``['gpu0', ...]`` (no duplicates);
    ``'cpu'`` -> ``['cpu']``."""
    out: list[str] = []
    for part in str(input_devices).split(","):
        token = part.strip().lower()
        for pattern, expand in REGEX:
            m = pattern.match(token)
            if m:
                ids = expand(m.groups())
                break
        else:
            raise NotSupportedCliException(
                f'Can not recognize device: "{part}" (use e.g. 0, 0-3, 0,2, gpu1 or cpu)')
        out += [d for d in ids if d not in out]
    return out
