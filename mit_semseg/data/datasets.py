"""Datasets over odgt lists (one JSON object per line: fpath_img, fpath_segm,
width, height), with the original toolkit's resizing and output dicts.

* ``TrainDataset`` returns a whole batch per ``__getitem__`` (images of one
  orientation, rescaled to a random short side, padded to a multiple of
  ``padding_constant``, labels downsampled by ``segm_downsampling_rate``; with
  ``DATASET.augment mmseg``, mmsegmentation's crops, see ``data.augment``).
  Use it with ``DataLoader(batch_size=<number of devices>, shuffle=False,
  collate_fn=user_scattered_collate, worker_init_fn=worker_init_fn)``; its
  length is a fake 1e10 because every worker walks its own shuffled copy of
  the list.
* ``ValDataset`` / ``TestDataset`` return one image with a list of resized
  copies, one per entry of ``imgSizes``, bit-identical to the original's.

Labels: annotation value 0 (unlabeled) becomes -1, value k becomes k-1
(int64). Files in other conventions (``DATASET.label_format``: 0-based with
``DATASET.ignore_label``, colour-coded with ``DATASET.class_table``) are
converted on reading to the same tensors (see ``mit_semseg.data.io``). Bad inputs
raise ``DatasetError`` naming the file and odgt line.

Randomness (train only): every DataLoader worker draws from its own
``numpy.random.Generator`` seeded from ``(seed, rank, worker_id)``, so workers
never repeat each other's batches and a run is reproducible for a given seed,
rank and worker count. With ``seed=None`` the stream is seeded from
``torch.initial_seed()`` instead (reproducible after ``torch.manual_seed``).
A new DataLoader iterator restarts the streams (keep one iterator for the
whole run, or ``persistent_workers=True``); a resumed run that wants fresh
batches should pass a different seed, e.g. ``TRAIN.seed + start_epoch``.
"""
from __future__ import annotations

import json
import logging
import os
import random
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.utils.data
from PIL import Image

from ..nn.data_parallel import user_scattered_collate
from ..runtime.process import loader_workers
from .augment import make_augment
from .augment import resize_labels as _resize_labels
from .classes import label_format
from .io import DatasetError, LabelFormat, read_annotation, read_image
from .transforms import Preprocess, imresize, normalize, round2nearest_multiple, scaled_size

__all__ = ["DatasetError", "BaseDataset", "TrainDataset", "ValDataset", "TestDataset",
           "worker_init_fn", "imresize", "inference_loader", "read_odgt_lines"]

logger = logging.getLogger(__name__)

def read_odgt_lines(path: str, strict_utf8: bool = True
                    ) -> Iterator[tuple[str, Any, str | None]]:
    """``(where, record, None)`` for every non-empty line of an odgt file, or
    ``(where, None, message)`` for a line that is not JSON; ``where`` is
    "PATH, line N". Raises DatasetError when the file is missing, or (with
    ``strict_utf8``) is not UTF-8 text."""
    if not os.path.isfile(path):
        raise DatasetError(f"{path}: odgt file not found")
    try:
        with open(path, "r", encoding="utf-8", errors="strict" if strict_utf8 else "replace") as f:
            lines = f.read().split("\n")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: odgt file is not UTF-8 text ({exc.reason})") from None
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}, line {lineno}"
        try:
            yield where, json.loads(line), None
        except json.JSONDecodeError as exc:
            yield where, None, f"{where}: malformed odgt line (not JSON: {exc.msg})"


class BaseDataset(torch.utils.data.Dataset):
    """Shared odgt parsing, transforms and size rules.

    ``opt`` is the ``cfg.DATASET`` node. ``odgt`` is a path or a list of dicts;
    ``max_sample`` keeps the first N entries, ``start_idx``/``end_idx`` (both
    >= 0) then keep that slice.
    """

    required_keys: tuple[str, ...] = ("fpath_img",)

    def __init__(self, odgt: str | os.PathLike | Sequence[dict], opt: Any,
                 max_sample: int = -1, start_idx: int = -1, end_idx: int = -1) -> None:
        self.preprocess = Preprocess.from_config(opt)
        self.imgSizes = self.preprocess.img_sizes
        self.imgMaxSize = opt.imgMaxSize
        self.padding_constant = self.preprocess.padding
        self.num_class = getattr(opt, "num_class", None)
        self.label_format: LabelFormat | None = None
        if "fpath_segm" in self.required_keys:
            self.label_format = label_format(opt)
        self.parse_input_list(odgt, max_sample, start_idx, end_idx)

    # -- odgt -----------------------------------------------------------------
    def parse_input_list(self, odgt: str | os.PathLike | Sequence[dict], max_sample: int = -1,
                         start_idx: int = -1, end_idx: int = -1) -> None:
        """Fill ``list_sample`` (dicts) and ``num_sample``; validate every kept entry."""
        if isinstance(odgt, (str, os.PathLike)):
            source = os.fspath(odgt)
            entries = list(self._read_odgt(source))
        elif isinstance(odgt, (list, tuple)):
            source = "odgt list"
            entries = [(f"{source}, item {i + 1}", rec) for i, rec in enumerate(odgt)]
        else:
            raise TypeError(f"odgt must be a path or a list of dicts, not {type(odgt).__name__}")

        if max_sample > 0:
            entries = entries[:max_sample]
        if start_idx >= 0 and end_idx >= 0:
            entries = entries[start_idx:end_idx]
        if not entries:
            raise DatasetError(f"{source}: no samples (after max_sample/start_idx/end_idx)")
        for where, rec in entries:
            self._check_record(where, rec)

        self.list_sample: list[dict] = [rec for _, rec in entries]
        self._where: list[str] = [where for where, _ in entries]
        self.num_sample = len(self.list_sample)
        logger.info("# samples: %d (%s)", self.num_sample, source)

    @staticmethod
    def _read_odgt(path: str) -> Iterable[tuple[str, dict]]:
        for where, rec, error in read_odgt_lines(path):
            if error is not None:
                raise DatasetError(error)
            yield where, rec

    def _check_record(self, where: str, rec: Any) -> None:
        if not isinstance(rec, dict):
            raise DatasetError(f"{where}: malformed odgt entry (expected a JSON object, "
                               f"got {type(rec).__name__})")
        for key in self.required_keys:
            if key not in rec:
                raise DatasetError(f"{where}: malformed odgt entry (missing '{key}')")
            value = rec[key]
            if key.startswith("fpath"):
                if not isinstance(value, str) or not value:
                    raise DatasetError(f"{where}: malformed odgt entry ('{key}' must be a path)")
            elif isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise DatasetError(f"{where}: malformed odgt entry ('{key}' must be a "
                                   f"positive integer, got {value!r})")

    def _located(self, index: int, exc: DatasetError) -> DatasetError:
        return DatasetError(f"{self._where[index]}: {exc.args[0]}")

    # -- transforms (the rule lives in .transforms) -----------------------------
    def img_transform(self, img: Image.Image) -> torch.Tensor:
        """RGB PIL image -> normalised float32 tensor [3, H, W] (``transforms.normalize``)."""
        return normalize(img)

    def segm_transform(self, segm: np.ndarray) -> torch.Tensor:
        """Class-index map -> int64 tensor with 0 -> -1 and k -> k-1."""
        return torch.from_numpy(np.array(segm, dtype=np.int64)).sub_(1)

    @staticmethod
    def round2nearest_multiple(x: int, p: int) -> int:
        """Smallest multiple of ``p`` that is >= ``x``."""
        return round2nearest_multiple(x, p)

    def scaled_size(self, height: int, width: int, short_size: int) -> tuple[int, int]:
        """(height, width) after scaling the short side to ``short_size`` with
        the long side capped at ``imgMaxSize`` (``transforms.scaled_size``)."""
        return scaled_size(height, width, short_size, self.imgMaxSize)

    def _load_pair(self, index: int, root: str) -> tuple[Image.Image, np.ndarray]:
        rec = self.list_sample[index]
        img_path = os.path.join(root, rec["fpath_img"])
        seg_path = os.path.join(root, rec["fpath_segm"])
        try:
            img = read_image(img_path)
            segm = read_annotation(seg_path, self.num_class, self.label_format)
        except DatasetError as exc:
            raise self._located(index, exc) from None
        if (segm.shape[1], segm.shape[0]) != img.size:
            raise DatasetError(
                f"{self._where[index]}: {seg_path}: annotation size {segm.shape[1]}x{segm.shape[0]} "
                f"differs from image {img_path} size {img.size[0]}x{img.size[1]} (width x height)")
        return img, segm


class TrainDataset(BaseDataset):
    """Training batches; ``__getitem__`` ignores its index and returns
    ``{'img_data': float [B, 3, H, W], 'seg_label': int64 [B, H/r, W/r]}``
    with ``B = batch_per_gpu`` images of the same orientation.

    Extra keyword arguments: ``seed`` (base seed, e.g. cfg.TRAIN.seed; None =
    from ``torch.initial_seed()``), ``rank`` (distributed rank mixed into the
    seed; None = ``torch.distributed.get_rank()`` when initialised, else 0),
    ``ignore_padding`` (label the padded border -1 instead of the original's 0).
    """

    required_keys = ("fpath_img", "fpath_segm", "width", "height")

    def __init__(self, root_dataset: str, odgt: str | os.PathLike | Sequence[dict], opt: Any,
                 batch_per_gpu: int = 1, *, seed: int | None = None, rank: int | None = None,
                 ignore_padding: bool = False, **kwargs: Any) -> None:
        super().__init__(odgt, opt, **kwargs)
        self.root_dataset = root_dataset
        self.segm_downsampling_rate = int(opt.segm_downsampling_rate)
        self.random_flip = bool(getattr(opt, "random_flip", True))
        self.batch_per_gpu = int(batch_per_gpu)
        self.ignore_padding = bool(ignore_padding)
        self.seed = seed
        if rank is None:
            dist = torch.distributed
            rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        self.rank = int(rank)
        if self.batch_per_gpu < 1:
            raise ValueError(f"batch_per_gpu must be >= 1, got {batch_per_gpu}")
        if self.padding_constant < self.segm_downsampling_rate:
            raise ValueError(
                f"DATASET.padding_constant ({self.padding_constant}) must be >= "
                f"DATASET.segm_downsampling_rate ({self.segm_downsampling_rate})")
        self._rng: np.random.Generator | None = None
        self._rng_owner: tuple[int, int] | None = None
        # DATASET.augment: None = the original's batches (make_batch)
        self.augment = make_augment(opt)

    # -- per-worker random stream -----------------------------------------------
    def init_worker(self, worker_id: int) -> None:
        """(Re)start this copy's random stream and sample order for ``worker_id``."""
        if self.seed is None:
            entropy = [torch.initial_seed() % 2**63, self.rank]
        else:
            entropy = [int(self.seed), self.rank, int(worker_id)]
        self._rng = np.random.default_rng(np.random.SeedSequence(entropy))
        self._rng_owner = (os.getpid(), int(worker_id))
        self._order = self._rng.permutation(self.num_sample)
        self._cursor = 0
        # pending sample indices per orientation: [portrait (h > w), landscape (h <= w)]
        self._pending: tuple[list[int], list[int]] = ([], [])

    def _stream(self) -> np.random.Generator:
        info = torch.utils.data.get_worker_info()
        owner = (os.getpid(), info.id if info is not None else 0)
        # A copy forked/pickled into a worker must not continue the parent's stream.
        if self._rng is None or self._rng_owner != owner:
            self.init_worker(owner[1])
        assert self._rng is not None
        return self._rng

    def _next_group(self, rng: np.random.Generator) -> list[int]:
        """Walk the shuffled list until one orientation has batch_per_gpu samples."""
        while True:
            index = int(self._order[self._cursor])
            rec = self.list_sample[index]
            bucket = self._pending[0 if rec["height"] > rec["width"] else 1]
            bucket.append(index)
            self._cursor += 1
            if self._cursor >= self.num_sample:
                self._cursor = 0
                self._order = rng.permutation(self.num_sample)
            if len(bucket) == self.batch_per_gpu:
                group = list(bucket)
                bucket.clear()
                return group

    # -- batches ----------------------------------------------------------------------
    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = self._stream()
        group = self._next_group(rng)
        if self.augment is not None:  # its draws come from the same stream
            return self.augment.batch(self, group, rng)
        short = self.imgSizes[int(rng.integers(len(self.imgSizes)))]
        flips = [bool(self.random_flip and rng.integers(2)) for _ in group]
        return self.make_batch(group, short, flips)

    def make_batch(self, group: Sequence[int], short: int,
                   flips: Sequence[bool]) -> dict[str, torch.Tensor]:
        """The batch of samples ``group`` (indices into the list) scaled to short side
        ``short``, each mirrored where ``flips`` says (the images decoded here)."""
        # Sizes come from the odgt width/height (as the original); checked against the file below.
        sizes = [self.scaled_size(self.list_sample[i]["height"], self.list_sample[i]["width"], short)
                 for i in group]
        p, r = self.padding_constant, self.segm_downsampling_rate
        batch_h = self.round2nearest_multiple(max(h for h, _ in sizes), p)
        batch_w = self.round2nearest_multiple(max(w for _, w in sizes), p)

        images = torch.zeros(len(group), 3, batch_h, batch_w)
        labels = torch.full((len(group), batch_h // r, batch_w // r),
                            -1 if self.ignore_padding else 0, dtype=torch.int64)
        for k, (index_k, (h, w), flip) in enumerate(zip(group, sizes, flips)):
            img, segm = self._load_pair(index_k, self.root_dataset)
            rec = self.list_sample[index_k]
            if img.size != (rec["width"], rec["height"]):
                raise DatasetError(
                    f"{self._where[index_k]}: {os.path.join(self.root_dataset, rec['fpath_img'])}: "
                    f"odgt says {rec['width']}x{rec['height']} but the image is "
                    f"{img.size[0]}x{img.size[1]} (width x height)")
            if flip:
                img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
                segm = segm[:, ::-1]
            img = imresize(img, (w, h), "bilinear")
            segm = _resize_labels(segm, w, h)

            small = self.downsample_labels(segm)
            sh, sw = min(small.shape[0], labels.shape[1]), min(small.shape[1], labels.shape[2])

            images[k, :, :h, :w] = self.img_transform(img)
            labels[k, :sh, :sw] = small[:sh, :sw]
        return {"img_data": images, "seg_label": labels}

    def read_pair(self, index: int) -> tuple[Image.Image, np.ndarray]:
        """Sample ``index``'s RGB image and annotation (values: 0 unlabeled, k class k),
        checked to be the same size; bad files raise DatasetError naming the odgt line."""
        return self._load_pair(index, self.root_dataset)

    def downsample_labels(self, segm: np.ndarray) -> torch.Tensor:
        """Annotation values ``[h, w]`` -> int64 labels (-1 unlabeled) downsampled by
        ``segm_downsampling_rate``."""
        r = self.segm_downsampling_rate
        h, w = segm.shape
        # Downsample by r without shifting: pad to a multiple of r with
        # "unlabeled" and keep the centre pixel (k*r + r//2) of every r x r
        # cell, which is exactly PIL's NEAREST resize by an integer factor.
        padded = np.zeros((self.round2nearest_multiple(h, r), self.round2nearest_multiple(w, r)),
                          dtype=segm.dtype)
        padded[:h, :w] = segm
        return self.segm_transform(padded[r // 2::r, r // 2::r])

    def __len__(self) -> int:
        return int(1e10)  # fake: every worker keeps its own endless stream


class ValDataset(BaseDataset):
    """Validation samples: ``{'img_ori': uint8 [H, W, 3] array, 'img_data':
    [tensor [1, 3, h, w] per imgSizes entry], 'seg_label': int64 [1, H, W],
    'info': fpath_img}``."""

    required_keys = ("fpath_img", "fpath_segm")

    def __init__(self, root_dataset: str, odgt: str | os.PathLike | Sequence[dict], opt: Any,
                 **kwargs: Any) -> None:
        super().__init__(odgt, opt, **kwargs)
        self.root_dataset = root_dataset

    def __getitem__(self, index: int) -> dict[str, Any]:
        img, segm = self._load_pair(index, self.root_dataset)
        return {
            "img_ori": np.array(img),
            "img_data": self.preprocess.scales(img),
            "seg_label": self.segm_transform(segm).unsqueeze(0).contiguous(),
            "info": self.list_sample[index]["fpath_img"],
        }

    def __len__(self) -> int:
        return self.num_sample


class TestDataset(BaseDataset):
    """Test images (``fpath_img`` used as given, no root), rotated by their EXIF
    orientation: ``{'img_ori', 'img_data', 'info'}`` as ``ValDataset``."""

    def __init__(self, odgt: str | os.PathLike | Sequence[dict], opt: Any, **kwargs: Any) -> None:
        super().__init__(odgt, opt, **kwargs)

    def __getitem__(self, index: int) -> dict[str, Any]:
        path = self.list_sample[index]["fpath_img"]
        try:
            img = read_image(path, exif_transpose=True)
        except DatasetError as exc:
            raise self._located(index, exc) from None
        return {"img_ori": np.array(img), "img_data": self.preprocess.scales(img), "info": path}

    def __len__(self) -> int:
        return self.num_sample


def worker_init_fn(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: start the TrainDataset stream for this
    worker and seed the worker's global ``random``/``numpy`` generators from the
    per-worker torch seed (for any other code running in the worker).

    TrainDataset also starts its stream lazily without this hook; passing it
    just makes the seeding explicit and covers global generators.
    """
    seed = torch.initial_seed()
    random.seed(seed)
    np.random.seed(seed % 2**32)
    info = torch.utils.data.get_worker_info()
    if info is not None and isinstance(info.dataset, TrainDataset):
        info.dataset.init_worker(worker_id)


def inference_loader(dataset: torch.utils.data.Dataset, workers: int) -> torch.utils.data.DataLoader:
    """A DataLoader over ``dataset`` one sample at a time, in order, each batch a
    one-item list (as the original's eval and test loops read them); ``workers``
    capped at the CPU count."""
    return torch.utils.data.DataLoader(dataset, batch_size=1, shuffle=False,
                                       collate_fn=user_scattered_collate,
                                       num_workers=loader_workers(workers))
