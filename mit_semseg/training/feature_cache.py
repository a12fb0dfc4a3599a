"""Frozen encoders: training the decoder alone, from features cached on disk.

``MODEL.freeze_encoder True`` fixes the encoder (no gradients, evaluation mode) and
trains the decoder (:class:`FrozenEncoderModule`). With ``TRAIN.feature_cache
FOLDER`` the encoder's features of every training image and view are computed
once and read back from disk in every step, so a step costs the decoder's
forward and backward only: a DINOv2 linear probe trains on a CPU.

Views: the training batches of the original's recipe are made of images scaled
to a short side from ``DATASET.imgSizes`` and mirrored at random
(``DATASET.random_flip``); nothing else is random. Every (short side, mirrored)
pair of every image is a view, and the cache holds the encoder's feature maps
and the labels of each view, computed from the one-image batch
``TrainDataset.make_batch([i], short, [flip])`` makes (the image padded to
``DATASET.padding_constant``). A batch of several images pads the cached maps
with zeros and the labels as the original pads its labels (0, or -1 with
``TRAIN.ignore_padding``); without the cache the padding happens before the
encoder instead, so with ``TRAIN.batch_size_per_gpu 1`` a cached run computes
what an uncached run computes (equal up to float rounding), and with larger
batches it differs only where images were padded.

The batches themselves come from the usual data streams (``TRAIN.stream``): the
same random draws pick the images, sides and flips, so runs resume exactly
(``--resume auto`` equals the uninterrupted run).

On disk: ``FOLDER/<key>/`` with ``meta.json`` (what the key was made of),
``index.npy`` (per image, view and level: offset and shape), one flat file per
feature level (``level<k>.bin``, ``TRAIN.feature_cache_dtype``) and ``labels.bin``
(int16), read through ``numpy.memmap``. ``<key>`` is a SHA-256 of the encoder's
architecture, options and weights, ``DATASET`` (the preprocessing, label format
and training list, with the size and modification time of every image and
annotation it names), ``TRAIN.ignore_padding``, ``TRAIN.precision`` and the
storage dtype: change any and a new entry is built; old entries stay until
deleted. A build is written to a temporary folder and renamed when complete,
so an interrupted build leaves no half cache (it starts again).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from contextlib import nullcontext
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm
from yacs.config import CfgNode

from ..data.datasets import TrainDataset
from ..models import SegmentationModule
from . import distributed as D

__all__ = ["CACHE_VERSION", "FrozenEncoderModule", "freeze_encoder_", "CachedTrainDataset",
           "cache_key", "open_feature_cache", "feature_keys"]

logger = logging.getLogger("Logger")

CACHE_VERSION = 1
_DTYPES = {"float32": np.float32, "float16": np.float16}
_AUTOCAST = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def feature_keys(count: int) -> list[str]:
    """The batch keys of cached feature levels: ``feat_0`` .. ``feat_<count-1>``."""
    return [f"feat_{k}" for k in range(count)]


def freeze_encoder_(encoder: nn.Module) -> nn.Module:
    """Stop gradients to every parameter of ``encoder`` and put it in evaluation mode."""
    for p in encoder.parameters():
        p.requires_grad_(False)
    return encoder.eval()


class FrozenEncoderModule(SegmentationModule):
    """``SegmentationModule`` with a fixed encoder: it stays in evaluation mode
    whatever ``train()`` asks, runs without building a graph, and a batch that
    carries cached features (``feat_0`` ... instead of ``img_data``) skips it."""

    def train(self, mode: bool = True) -> "FrozenEncoderModule":
        super().train(mode)
        self.encoder.eval()
        return self

    def features(self, feed_dict: dict) -> list[torch.Tensor]:
        """Cached maps when the batch carries them, else the frozen encoder's, without
        gradients."""
        if "feat_0" in feed_dict:
            return [feed_dict[k] for k in feature_keys(sum(
                1 for key in feed_dict if key.startswith("feat_")))]
        with torch.no_grad():
            return self.encoder(feed_dict["img_data"], return_feature_maps=True)


# ============================================================================ the key

def _weights_digest(module: nn.Module) -> str:
    digest = hashlib.sha256()
    for key, value in module.state_dict().items():
        tensor = value.detach().cpu().contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def _plain(node: Any) -> Any:
    if isinstance(node, CfgNode):
        return {k: _plain(v) for k, v in sorted(node.items())}
    if isinstance(node, (list, tuple)):
        return [_plain(v) for v in node]
    return node


def _file_state(path: str) -> list:
    try:
        st = os.stat(path)
    except OSError:
        return [path, None]
    return [path, st.st_size, st.st_mtime_ns]


def _list_digest(dataset: TrainDataset) -> str:
    digest = hashlib.sha256()
    for rec in dataset.list_sample:
        for name in ("fpath_img", "fpath_segm"):
            state = _file_state(os.path.join(dataset.root_dataset, str(rec[name])))
            digest.update(json.dumps(state).encode())
    return digest.hexdigest()


def cache_key(cfg: CfgNode, encoder: nn.Module, dataset: TrainDataset) -> tuple[str, dict]:
    """``(key, what it was made of)``: see the module docstring."""
    dataset_cfg = _plain(cfg.DATASET)
    dataset_cfg.pop("list_val", None)
    made_of = {
        "version": CACHE_VERSION,
        "arch_encoder": str(cfg.MODEL.arch_encoder).lower(),
        "encoder_options": _plain(cfg.MODEL.get("encoder_options", {})),
        "encoder_weights": _weights_digest(encoder),
        "dataset": dataset_cfg,
        "files": _list_digest(dataset),
        "ignore_padding": bool(cfg.TRAIN.ignore_padding),
        "precision": str(cfg.TRAIN.precision),
        "dtype": str(cfg.TRAIN.feature_cache_dtype),
    }
    text = json.dumps(made_of, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24], made_of


# ============================================================================ building

def _views(dataset: TrainDataset) -> list[tuple[int, bool]]:
    flips = (False, True) if dataset.random_flip else (False,)
    return [(int(short), flip) for short in dataset.imgSizes for flip in flips]


def _build(folder: str, made_of: dict, encoder: nn.Module, dataset: TrainDataset,
           device: torch.device, precision: str, dtype: str, show: bool) -> None:
    """Compute and write every view's features and labels into ``folder``."""
    views = _views(dataset)
    count = dataset.num_sample
    tmp = f"{folder}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    store = _DTYPES[dtype]
    autocast = (torch.autocast(device.type, dtype=_AUTOCAST[precision])
                if _AUTOCAST[precision] is not None else nullcontext())
    files: list[Any] = []
    index: np.ndarray | None = None
    offsets: list[int] = []
    label_file = open(os.path.join(tmp, "labels.bin"), "wb")
    label_offset = 0
    was_training = encoder.training
    encoder.eval()
    try:
        with torch.no_grad(), tqdm(total=count * len(views), desc="Caching features",
                                   unit="view", disable=None if show else True) as bar:
            for i in range(count):
                for v, (short, flip) in enumerate(views):
                    batch = TrainDataset.make_batch(dataset, [i], short, [flip])
                    with autocast:
                        maps = encoder(batch["img_data"].to(device), return_feature_maps=True)
                    if index is None:
                        index = np.zeros((count, len(views), len(maps) + 1, 4), np.int64)
                        files = [open(os.path.join(tmp, f"level{k}.bin"), "wb")
                                 for k in range(len(maps))]
                        offsets = [0] * len(maps)
                    elif len(maps) != index.shape[2] - 1:
                        raise RuntimeError(f"the encoder gave {len(maps)} feature maps for one "
                                           f"image and {index.shape[2] - 1} for another")
                    for k, m in enumerate(maps):
                        arr = m[0].float().cpu().numpy().astype(store, copy=False)
                        files[k].write(np.ascontiguousarray(arr).tobytes())
                        index[i, v, k] = (offsets[k],) + arr.shape
                        offsets[k] += arr.size
                    labels = batch["seg_label"][0].numpy().astype(np.int16)
                    label_file.write(np.ascontiguousarray(labels).tobytes())
                    index[i, v, -1] = (label_offset, 1) + labels.shape
                    label_offset += labels.size
                    bar.update(1)
    finally:
        for fh in files + [label_file]:
            fh.close()
        encoder.train(was_training)
    assert index is not None
    np.save(os.path.join(tmp, "index.npy"), index)
    meta = {"made_of": made_of, "views": views, "images": count, "levels": len(offsets),
            "dtype": dtype, "bytes": sum(offsets) * np.dtype(store).itemsize + 2 * label_offset}
    with open(os.path.join(tmp, "meta.json"), "w", encoding="utf-8") as fh:
        json.dump(meta, fh, indent=1, sort_keys=True, default=str)
    try:
        os.replace(tmp, folder)
    except OSError:  # another process finished the same entry first: keep that one
        shutil.rmtree(tmp, ignore_errors=True)
        if not os.path.isfile(os.path.join(folder, "meta.json")):
            raise


def open_feature_cache(cfg: CfgNode, env: D.DistEnv, encoder: nn.Module, dataset: TrainDataset,
                       device: torch.device) -> "CachedTrainDataset":
    """The training dataset reading from ``TRAIN.feature_cache`` (building its entry
    first when missing: the main process builds, the others wait)."""
    root = str(cfg.TRAIN.feature_cache)
    key, made_of = cache_key(cfg, encoder, dataset)
    folder = os.path.join(root, key)
    ready = os.path.isfile(os.path.join(folder, "meta.json"))
    if not ready and env.is_main:
        os.makedirs(root, exist_ok=True)
        logger.info("Feature cache: building %s (%d images x %d views)", folder,
                    dataset.num_sample, len(_views(dataset)))
        tic = time.perf_counter()
        _build(folder, made_of, encoder, dataset, device, str(cfg.TRAIN.precision),
               str(cfg.TRAIN.feature_cache_dtype), env.is_main)
        logger.info("Feature cache: built in %.1f s", time.perf_counter() - tic)
    if not ready:
        D.barrier()
    cached = CachedTrainDataset.from_dataset(dataset, folder)
    logger.info("Feature cache: %s, %d images x %d views, %.1f MB", folder, cached.num_sample,
                len(cached.views), cached.meta["bytes"] / 2**20)
    return cached


# ============================================================================ reading

class CachedTrainDataset(TrainDataset):
    """A ``TrainDataset`` whose batches come from a feature cache: ``make_batch``
    returns ``{'feat_0': [B, C0, h0, w0], ..., 'seg_label': [B, h, w]}`` (the
    levels and labels of each image's view, padded to the batch's largest), the
    random draws (images, sides, flips) being the dataset's own."""

    cache_dir: str

    @classmethod
    def from_dataset(cls, dataset: TrainDataset, folder: str) -> "CachedTrainDataset":
        """``dataset`` (its list, stream settings and random state) reading ``folder``."""
        new = cls.__new__(cls)
        new.__dict__.update(dataset.__dict__)
        new.cache_dir = folder
        with open(os.path.join(folder, "meta.json"), encoding="utf-8") as fh:
            new.meta = json.load(fh)
        new.views = [(int(s), bool(f)) for s, f in new.meta["views"]]
        if new.meta["images"] != dataset.num_sample or new.views != _views(dataset):
            raise RuntimeError(f"feature cache {folder} does not match the training list "
                               f"(delete the folder to rebuild it)")
        new._arrays = None
        return new

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_arrays"] = None  # memory maps are reopened by each process
        return state

    def _open(self) -> tuple[np.ndarray, list[np.memmap], np.memmap]:
        if self._arrays is None:
            store = _DTYPES[self.meta["dtype"]]
            index = np.load(os.path.join(self.cache_dir, "index.npy"))
            levels = [np.memmap(os.path.join(self.cache_dir, f"level{k}.bin"), dtype=store,
                                mode="r") for k in range(int(self.meta["levels"]))]
            labels = np.memmap(os.path.join(self.cache_dir, "labels.bin"), dtype=np.int16,
                               mode="r")
            self._arrays = (index, levels, labels)
        return self._arrays

    @staticmethod
    def _read(flat: np.ndarray, entry: np.ndarray) -> np.ndarray:
        offset, shape = int(entry[0]), tuple(int(s) for s in entry[1:])
        size = int(np.prod(shape))
        return np.asarray(flat[offset:offset + size]).reshape(shape)

    def make_batch(self, group: Sequence[int], short: int,
                   flips: Sequence[bool]) -> dict[str, torch.Tensor]:
        index, levels, labels = self._open()
        views = [self.views.index((int(short), bool(f))) for f in flips]
        batch: dict[str, torch.Tensor] = {}
        for k, flat in enumerate(levels):
            parts = [self._read(flat, index[i, v, k]) for i, v in zip(group, views)]
            c = parts[0].shape[0]
            h, w = max(p.shape[1] for p in parts), max(p.shape[2] for p in parts)
            out = torch.zeros(len(parts), c, h, w)
            for n, p in enumerate(parts):
                out[n, :, :p.shape[1], :p.shape[2]] = torch.from_numpy(p.astype(np.float32))
            batch[f"feat_{k}"] = out
        parts = [self._read(labels, index[i, v, -1])[0] for i, v in zip(group, views)]
        h, w = max(p.shape[0] for p in parts), max(p.shape[1] for p in parts)
        seg = torch.full((len(parts), h, w), -1 if self.ignore_padding else 0, dtype=torch.int64)
        for n, p in enumerate(parts):
            seg[n, :p.shape[0], :p.shape[1]] = torch.from_numpy(p.astype(np.int64))
        batch["seg_label"] = seg
        return batch
