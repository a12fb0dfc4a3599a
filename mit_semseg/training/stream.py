"""The training data stream: which batches every iteration gets, reproducibly.

Every rank's batches come from ``TrainDataset`` streams that are restarted at
the start of every epoch, and every ``TRAIN.checkpoint_every`` iterations
inside an epoch, from a seed derived from ``(TRAIN.seed, global iteration)``
(and the rank and loader worker, mixed in by ``TrainDataset``). A run resumed
from any checkpoint therefore sees the same batches as a run that never
stopped (see :mod:`mit_semseg.training.loop`).
"""
from __future__ import annotations

import copy
import json
import os
from typing import Any, Callable, Iterator

import numpy as np
import torch
from yacs.config import CfgNode

from ..data.datasets import TrainDataset, worker_init_fn
from ..errors import InputNotFoundError
from ..nn import user_scattered_collate
from ..runtime.process import loader_workers

__all__ = ["DataNotFoundError", "check_dataset", "derive_seed", "segment_start", "make_loader",
           "TRAIN_STREAM", "BN_STREAM", "ResumableStream"]

# Stream ids mixed into the data seeds: training batches vs. precise-BN batches.
TRAIN_STREAM, BN_STREAM = 0, 1


class DataNotFoundError(InputNotFoundError):
    """The training list or the images it names are not where the config says."""


_DATA_HINT = ("To get ADE20K (about 1 GB), run `bash download_ADE20K.sh` in the repository root: "
              "it unpacks ADEChallengeData2016/ into ./data/, where the ade20k-*.yaml presets look. "
              "For a small demo without a download: `python -m mit_semseg synthetic --root "
              "data/synthetic`, then `python train.py --gpus cpu --cfg config/synthetic-demo.yaml`.")


def check_dataset(cfg: CfgNode) -> None:
    """Fail early, naming the path looked for and how to get the data, when the
    training list, the dataset folder or the list's first image is missing."""
    root, odgt = cfg.DATASET.root_dataset, cfg.DATASET.list_train
    if not os.path.isfile(odgt):
        raise DataNotFoundError(f"training list not found: {odgt} (DATASET.list_train). {_DATA_HINT}")
    if not os.path.isdir(root):
        raise DataNotFoundError(f"dataset folder not found: {root} (DATASET.root_dataset). "
                                f"{_DATA_HINT}")
    with open(odgt, "r", encoding="utf-8", errors="replace") as fh:
        for lineno, line in enumerate(fh, start=1):
            if line.strip():
                break
        else:
            return  # empty list: TrainDataset reports it
    try:
        first = json.loads(line)["fpath_img"]
    except (ValueError, KeyError, TypeError):
        return  # malformed line: TrainDataset reports it with its reason
    path = os.path.join(root, str(first))
    if not os.path.isfile(path):
        raise DataNotFoundError(
            f"first training image not found: {path} (DATASET.root_dataset '{root}' + fpath_img "
            f"of {odgt} line {lineno}). {_DATA_HINT}")


def derive_seed(seed: int, stream: int, start: int) -> int:
    return int(np.random.SeedSequence([int(seed) % 2**64, stream, start]).generate_state(1)[0])


def segment_start(global_iter: int, epoch_iters: int, every: int) -> int:
    """First iteration of the data segment holding ``global_iter``: segments start
    at every epoch start and every ``every`` iterations inside an epoch."""
    epoch0, i = divmod(global_iter, epoch_iters)
    return epoch0 * epoch_iters + ((i // every) * every if every > 0 else 0)


class _StreamDataset(torch.utils.data.Dataset):
    """A ``TrainDataset`` driven by keys: key = stream seed (the stream restarts
    when it changes), ``None`` = placeholder item that touches no stream."""

    def __init__(self, dataset: TrainDataset, channels_last: bool) -> None:
        self.dataset = copy.copy(dataset)  # own stream state; the sample list is shared
        self.channels_last = channels_last
        self._seed: int | None = None

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: int | None) -> dict[str, torch.Tensor] | None:
        if key is None:
            return None
        if key != self._seed:
            info = torch.utils.data.get_worker_info()
            self.dataset.seed = key
            self.dataset.init_worker(info.id if info is not None else 0)
            self._seed = key
        batch = self.dataset[0]
        if self.channels_last and "img_data" in batch:  # cached features have none
            batch["img_data"] = batch["img_data"].contiguous(memory_format=torch.channels_last)
        return batch


class _KeySampler(torch.utils.data.Sampler):
    """One list of ``per_iter`` keys per iteration ``g`` in ``range(first, end)``;
    iterations before ``start`` get placeholders."""

    def __init__(self, first: int, start: int, end: int, per_iter: int,
                 key: Callable[[int], int]) -> None:
        self.first, self.start, self.end, self.per_iter, self.key = first, start, end, per_iter, key

    def __len__(self) -> int:
        return max(0, self.end - self.first)

    def __iter__(self) -> Iterator[list]:
        for g in range(self.first, self.end):
            yield [None if g < self.start else self.key(g)] * self.per_iter


def make_loader(dataset: TrainDataset, cfg: CfgNode, workers: int, per_iter: int,
                 start: int, end: int, key: Callable[[int], int], pin_memory: bool
                 ) -> tuple[torch.utils.data.DataLoader, int]:
    """Loader of the batches of iterations ``start..end-1``; also returns how many
    placeholder batches come first.

    A DataLoader hands item k to worker ``k % workers``. The first batch is
    shifted back to a multiple of ``workers`` so that iteration g is always
    served by worker ``g % workers``, whatever iteration the run starts at:
    the worker id is part of the stream seed.
    """
    first = start - start % workers if workers > 0 else start
    sampler = _KeySampler(first, start, end, per_iter, key)
    loader = torch.utils.data.DataLoader(
        _StreamDataset(dataset, channels_last=not cfg.TRAIN.exact), batch_sampler=sampler,
        collate_fn=user_scattered_collate, num_workers=workers, pin_memory=pin_memory,
        worker_init_fn=worker_init_fn,
        # own generator: creating the loader must not consume the global torch RNG
        generator=torch.Generator().manual_seed(int(cfg.TRAIN.seed) % 2**63))
    return loader, start - first


class ResumableStream:
    """The default data stream: batches keyed by ``(TRAIN.seed, segment)`` (see the
    module docstring), so that a run resumed anywhere sees the batches of a run that
    never stopped."""

    def open(self, trainer: Any, global_iter: int) -> Iterator[list]:
        """This process's batches from iteration ``global_iter`` to the run's end
        (``trainer.draws_per_iter`` per iteration)."""
        cfg = trainer.cfg
        epoch_iters, every = int(cfg.TRAIN.epoch_iters), int(cfg.TRAIN.checkpoint_every)
        seed = int(cfg.TRAIN.seed)
        # with TRAIN.accumulate K, one iteration's K micro-steps come from one loader
        # item: the same segment stream, drawn in order by one worker
        loader, placeholders = make_loader(
            trainer.dataset, cfg, loader_workers(cfg.TRAIN.workers), trainer.draws_per_iter,
            global_iter, int(cfg.TRAIN.num_epoch) * epoch_iters,
            lambda g: derive_seed(seed, TRAIN_STREAM, segment_start(g, epoch_iters, every)),
            trainer.device.type == "cuda")
        batches = iter(loader)
        for _ in range(placeholders):
            next(batches)
        return batches
