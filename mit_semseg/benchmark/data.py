"""Section ``data``: TrainDataset + DataLoader batches/s per worker count, and the
data-wait vs compute split of the default training step fed in-process."""
from __future__ import annotations

import os
import time
from types import SimpleNamespace
from typing import Any

import torch

from ..accel import channels_last_
from ..data.datasets import TrainDataset, worker_init_fn
from ..data.synthetic import MAX_CLASSES, make_synthetic_dataset
from ..nn import user_scattered_collate
from .harness import Bench, Pair, median, original_train_step, summary
from .training import train_setup


def _loader_rate(bench: Bench, ds: TrainDataset, workers: int) -> dict[str, Any]:
    a = bench.options
    loader = torch.utils.data.DataLoader(ds, batch_size=1, shuffle=False,
                                         collate_fn=user_scattered_collate, num_workers=workers,
                                         worker_init_fn=worker_init_fn)
    it = iter(loader)
    for _ in range(1 + 2 * workers):  # start-up, then drain the prefetched batches
        next(it)
    times = []
    t0 = time.perf_counter()
    for _ in range(a.data_batches):
        t = time.perf_counter()
        next(it)
        times.append(time.perf_counter() - t)
    rate = a.data_batches / (time.perf_counter() - t0)
    del it, loader
    entry: dict[str, Any] = {"batches_per_s": rate, "images_per_s": rate * a.train_batch}
    if workers == 0:  # per-batch times mean something only without prefetching
        entry["ms_per_batch"] = summary([1e3 * t for t in times])
    return entry


def _step_split(bench: Bench, pair: Pair, ds: TrainDataset) -> dict[str, Any]:
    a, dev = bench.options, bench.device
    module, opts, _ = train_setup(pair, "default", dev)
    data_t, comp_t = [], []
    for i in range(a.warmup + a.data_batches):
        t0 = time.perf_counter()
        feed = {k: v.to(dev) for k, v in ds[0].items()}
        channels_last_(None, feed)
        t1 = time.perf_counter()
        _, seconds = original_train_step(module, opts, feed, dev)
        if i >= a.warmup:
            data_t.append(t1 - t0)
            comp_t.append(seconds)
    return {"pair": pair.name, "data_ms": summary([1e3 * t for t in data_t]),
            "compute_ms": summary([1e3 * t for t in comp_t]),
            "data_share": median(data_t) / (median(data_t) + median(comp_t))}


def run_data(bench: Bench) -> None:
    """Section ``data`` on ``--data-images`` synthetic images around ``--train-size``."""
    a = bench.options
    root = os.path.join(bench.workdir, "synthetic")
    lo = max(16, a.train_size - a.train_size // 4)
    odgt = make_synthetic_dataset(root, num_train=a.data_images, num_val=0,
                                  size_range=(lo, a.train_size + a.train_size // 4),
                                  seed=0)["training"]
    opt = SimpleNamespace(imgSizes=(a.train_size,), imgMaxSize=a.train_size + a.train_size // 4,
                          padding_constant=8, segm_downsampling_rate=8, random_flip=True,
                          num_class=MAX_CLASSES)
    out: dict[str, Any] = {"batch": a.train_batch, "image_side": a.train_size, "loaders": {}}
    for workers in a.data_workers:
        ds = TrainDataset(root, odgt, opt, batch_per_gpu=a.train_batch, seed=0)
        out["loaders"][str(workers)] = entry = _loader_rate(bench, ds, workers)
        bench.log(f"data loader, {workers} workers: {entry['batches_per_s']:.1f} batches/s")
    if a.train_pairs:
        spec = a.train_pairs[0]
        pair = Pair(spec, MAX_CLASSES, bench.workdir, (a.pair_options or {}).get(spec))
        rate = pair.label_stride()  # labels at the pair's score resolution
        split = SimpleNamespace(**{**vars(opt), "segm_downsampling_rate": rate,
                                   "padding_constant": max(opt.padding_constant, rate)})
        out["train_step_split"] = _step_split(
            bench, pair, TrainDataset(root, odgt, split, batch_per_gpu=a.train_batch, seed=0))
    bench.results["data"] = out
