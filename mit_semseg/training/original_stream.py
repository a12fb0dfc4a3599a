"""``TRAIN.stream original``: the batch sequence of the original toolkit's train.py.

The original seeds Python's ``random`` and torch with ``TRAIN.seed`` (not
NumPy), builds the network, then iterates a DataLoader (``batch_size`` = number
of GPUs, ``TRAIN.workers`` worker processes) over a dataset whose
``__getitem__`` ignores the index except once: on its first call in a process
it seeds NumPy's global generator with that index and shuffles its copy of the
sample list. Every call then walks the list, collecting samples into two
orientation buckets (height > width, or not) until one holds
``batch_size_per_gpu`` samples, reshuffling the list each time the walk wraps;
draws the short side with ``np.random.choice(imgSizes)`` and a flip per image
with ``np.random.choice([0, 1])``. DataLoader batch ``k`` is made by worker
``k % workers`` (in the main process without workers), each worker with its own
copy of the list and generator.

This module replays exactly those draws, one generator per (simulated) worker,
to plan every batch (samples, short side, flips) without touching an image;
the images are then decoded by ``TrainDataset.make_batch``, as the default
stream does. A run on one device with ``TRAIN.exact True TRAIN.stream
original`` therefore gets the original's batches, losses and weights (the
network's initial weights given as files, or drawn by the same init code).
Creating the loader draws once from torch's global generator, as the
original's does. Resuming replays the plan up to the resume point, so it is
exact too.
"""
from __future__ import annotations

import random
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from ..config import ConfigError
from ..nn import user_scattered_collate

__all__ = ["OriginalPlanner", "OriginalStream"]

Plan = tuple[tuple[int, ...], int, tuple[bool, ...]]  # (sample indices, short side, flips)


class _WorkerStream:
    """One process's copy of the original dataset's walk (its list, buckets, generator)."""

    def __init__(self, samples: Sequence[dict], first_index: int, batch_per_gpu: int,
                 img_sizes: Sequence[int], flips: bool) -> None:
        self.samples = samples
        self.first_index = first_index
        self.batch = batch_per_gpu
        self.sizes = tuple(img_sizes)
        self.flips = flips
        self.order: list[int] = list(range(len(samples)))
        self.cursor = 0
        self.buckets: tuple[list[int], list[int]] = ([], [])
        self.rng: np.random.RandomState | None = None

    def next_plan(self) -> Plan:
        if self.rng is None:  # the first __getitem__ of this process
            self.rng = np.random.RandomState(self.first_index)
            self.rng.shuffle(self.order)
        group = self._sub_batch()
        short = int(self.rng.choice(self.sizes))
        flips = tuple(bool(self.rng.choice([0, 1])) if self.flips else False for _ in group)
        return tuple(group), short, flips

    def _sub_batch(self) -> list[int]:
        assert self.rng is not None
        while True:
            index = self.order[self.cursor]
            rec = self.samples[index]
            self.buckets[0 if rec["height"] > rec["width"] else 1].append(index)
            self.cursor += 1
            if self.cursor >= len(self.order):
                self.cursor = 0
                self.rng.shuffle(self.order)
            for bucket in self.buckets:
                if len(bucket) == self.batch:
                    group = list(bucket)
                    bucket.clear()
                    return group


class OriginalPlanner:
    """Plans of the original's DataLoader batches: ``plans(k)`` is the list of
    ``per_iter`` sub-batch plans of batch ``k`` (k = 0, 1, ... in order)."""

    def __init__(self, samples: Sequence[dict], *, batch_per_gpu: int,
                 img_sizes: Sequence[int], workers: int, per_iter: int,
                 flips: bool = True) -> None:
        self.per_iter = int(per_iter)
        self.workers = max(0, int(workers))
        count = max(1, self.workers)
        # worker w first serves DataLoader batch w, whose first index is w * per_iter
        self.streams = [_WorkerStream(samples, w * self.per_iter, batch_per_gpu, img_sizes, flips)
                        for w in range(count)]
        self.next_batch = 0

    def plans(self, k: int) -> list[Plan]:
        if k != self.next_batch:
            raise ValueError(f"batches are planned in order: expected {self.next_batch}, got {k}")
        stream = self.streams[k % len(self.streams)]
        self.next_batch += 1
        return [stream.next_plan() for _ in range(self.per_iter)]


class _PlannedBatches(torch.utils.data.Dataset):
    """Decodes a plan into a batch with ``TrainDataset.make_batch``."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return 2 ** 62

    def __getitem__(self, plan: Plan) -> dict[str, torch.Tensor]:
        group, short, flips = plan
        return self.dataset.make_batch(group, short, flips)


class _PlanSampler(torch.utils.data.Sampler):
    def __init__(self, planner: OriginalPlanner, start: int, end: int) -> None:
        self.planner, self.start, self.end = planner, start, end

    def __len__(self) -> int:
        return max(0, self.end - self.start)

    def __iter__(self) -> Iterator[list[Plan]]:
        for k in range(self.end):
            plans = self.planner.plans(k)
            if k >= self.start:
                yield plans


class OriginalStream:
    """The data stream of ``TRAIN.stream original`` (see the module docstring)."""

    @staticmethod
    def seed(seed: int) -> None:
        """The original's seeding: Python's ``random`` and torch, not NumPy."""
        random.seed(seed)
        torch.manual_seed(seed)

    def open(self, trainer: Any, global_iter: int) -> Iterator[list]:
        cfg = trainer.cfg
        if trainer.env.world_size > 1:
            raise ConfigError("TRAIN.stream original replays the original's single-process "
                              "stream; under torchrun use TRAIN.stream resumable")
        dataset = trainer.dataset
        flips = bool(getattr(dataset, "random_flip", True))
        planner = OriginalPlanner(dataset.list_sample, batch_per_gpu=dataset.batch_per_gpu,
                                  img_sizes=dataset.imgSizes, workers=int(cfg.TRAIN.workers),
                                  per_iter=trainer.per_iter, flips=flips)
        total = int(cfg.TRAIN.num_epoch) * int(cfg.TRAIN.epoch_iters)
        # The original's loader: default generator (its iterator draws once from torch's
        # global one), one plan list per batch, decoded in the main process so that the
        # plan order is the loader's order.
        loader = torch.utils.data.DataLoader(
            _PlannedBatches(dataset), batch_sampler=_PlanSampler(planner, global_iter, total),
            collate_fn=lambda items: user_scattered_collate(items), num_workers=0,
            pin_memory=trainer.device.type == "cuda")
        return iter(loader)
