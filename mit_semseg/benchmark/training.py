"""Section ``train``: training iterations/s, memory and the loss of every iteration.

Methods: ``original`` (with ``--compare-original``), ``exact`` (the original's
operations: NCHW, ``torch.optim.SGD`` as PyTorch defaults it; train.py's
``TRAIN.exact True``), ``default`` (train.py's default step:
``optim.fast_training_`` and ``optim.make_sgd``) and ``default-bf16`` (the
default step under bf16 autocast, where ``--precisions`` has bf16). All start
from the same weights and see the same batches and dropout seeds; speedups
and loss differences are relative to ``original`` when present, else ``exact``.
"""
from __future__ import annotations

import os
from typing import Any

import torch
import torch.nn as nn

from ..models import SegmentationModule
from ..accel import channels_last_, fast_training_
from ..training.optim import group_weight, make_sgd
from .harness import (Bench, MemoryProbe, Pair, Recorder, median,
                      original_train_step, summary)

LR, MOMENTUM, WEIGHT_DECAY = 0.02, 0.9, 1e-4


def train_setup(pair: Pair, method: str, device: torch.device,
                weights: tuple[str, str] | None = None
                ) -> tuple[nn.Module, list[torch.optim.Optimizer], Any]:
    """A SegmentationModule in training mode, its two SGD optimizers and the
    autocast context (or None) of ``method`` ("exact", "default", "default-bf16");
    ``weights``: (encoder, decoder) state-dict files, else a random init."""
    network = pair.network(weights)
    enc, dec = network.encoder, network.decoder
    deep_sup = 0.4 if pair.dec_arch.endswith("deepsup") else None
    module = SegmentationModule.from_network(network, nn.NLLLoss(ignore_index=-1),
                                             deep_sup).to(device).train()
    if method == "exact":
        sgd: Any = torch.optim.SGD
        ctx = None
    else:
        fast_training_(module)
        sgd = make_sgd
        ctx = (torch.autocast(device.type, dtype=torch.bfloat16)
               if method == "default-bf16" else None)
    opts = [sgd(group_weight(net), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
            for net in (enc, dec)]
    return module, opts, ctx


def _batches(bench: Bench, pair: Pair, count: int) -> list[dict[str, torch.Tensor]]:
    a = bench.options
    g = torch.Generator().manual_seed(11)
    s, ls = a.train_size, pair.score_side(a.train_size)  # labels at the scores' size
    return [{"img_data": torch.randn(a.train_batch, 3, s, s, generator=g),
             "seg_label": torch.randint(-1, pair.num_class, (a.train_batch, ls, ls),
                                        generator=g)}
            for _ in range(count)]


def train_methods(bench: Bench) -> list[str]:
    """``exact`` always (the reference without the original), ``default`` and
    ``default-bf16`` as chosen by ``--methods`` / ``--precisions``."""
    a = bench.options
    methods = ["exact"]
    if "default" in a.methods:
        methods.append("default")
        if "bf16" in a.precisions:
            methods.append("default-bf16")
    elif "default-bf16" in a.methods:
        methods.append("default-bf16")
    return methods


def _train_pair(bench: Bench, pair: Pair) -> dict[str, Any]:
    a, dev, worker = bench.options, bench.device, bench.worker
    torch.manual_seed(0)
    init = (os.path.join(bench.workdir, f"train_{pair.name}.enc.pth"),
            os.path.join(bench.workdir, f"train_{pair.name}.dec.pth"))
    fresh = pair.network()
    torch.save(fresh.encoder.state_dict(), init[0])
    torch.save(fresh.decoder.state_dict(), init[1])
    batches = _batches(bench, pair, 4)
    methods = train_methods(bench)
    state: dict[str, Any] = {}
    for m in methods:
        module, opts, ctx = train_setup(pair, m, dev, init)
        feeds = [{k: v.to(dev) for k, v in b.items()} for b in batches]
        if m != "exact":
            for feed in feeds:
                channels_last_(None, feed)
        state[m] = (module, opts, feeds, ctx)
    key = f"train:{pair.name}"
    if worker is not None:
        batches_path = os.path.join(bench.workdir, "train_batches.pt")
        torch.save(batches, batches_path)
        worker.call(cmd="load_train", key=key, enc=pair.enc_arch, dec=pair.dec_arch,
                    fc_dim=pair.fc_dim, num_class=pair.num_class, enc_weights=init[0],
                    dec_weights=init[1], lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY,
                    deep_sup_scale=0.4 if pair.dec_arch.endswith("deepsup") else None,
                    batches=batches_path)
        methods = ["original"] + methods
    losses: dict[str, list[float]] = {m: [] for m in methods}
    recorder = Recorder()
    for i in range(a.warmup + a.train_iters):
        for m in methods:
            if m == "original":
                rec = worker.call(cmd="train_step", key=key, index=i, seed=1000 + i)
                loss, seconds = rec["loss"], rec["time"]
                peak, delta = rec["peak_mb"], rec["delta_mb"]
            else:
                module, opts, feeds, ctx = state[m]
                with MemoryProbe(dev) as mem:
                    loss, seconds = original_train_step(module, opts, feeds[i % len(feeds)], dev,
                                                        ctx, seed=1000 + i)
                peak, delta = mem.peak_mb, mem.delta_mb
            losses[m].append(loss)
            if i >= a.warmup:
                recorder.add(m, {"time": seconds, "peak_mb": peak, "delta_mb": delta})
    if worker is not None:
        worker.call(cmd="free", key=key)
    ref = "original" if "original" in methods else "exact"
    out: dict[str, Any] = {"pair": pair.name, "batch": a.train_batch, "size": a.train_size,
                           "reference": ref, "methods": {}}
    for m in methods:
        t = recorder.field(m, "time")
        entry = {
            "it_per_s": summary([1.0 / x for x in t]),
            "img_per_s": summary([a.train_batch / x for x in t]),
            "ms_per_it": summary([1e3 * x for x in t]),
            "peak_rss_mb" if dev.type == "cpu" else "peak_alloc_mb":
                max(recorder.field(m, "peak_mb"), default=None),
            "losses": losses[m],
        }
        if m != ref:
            entry["speedup"] = median([1.0 / x for x in t]) / median(
                [1.0 / x for x in recorder.field(ref, "time")])
            diffs = [abs(x - y) / max(abs(y), 1e-12) for x, y in zip(losses[m], losses[ref])]
            entry["first_rel_loss_diff_vs_" + ref] = diffs[0] if diffs else None
            entry["max_rel_loss_diff_vs_" + ref] = max(diffs) if diffs else None
        out["methods"][m] = entry
    return out


def run_train(bench: Bench) -> None:
    """Section ``train``: every ``--train-pairs`` pair, ``--train-iters`` timed iterations."""
    a = bench.options
    rows = []
    for spec in a.train_pairs:
        pair = Pair(spec, a.num_class, bench.workdir, (a.pair_options or {}).get(spec))
        bench.log(f"training {pair.name}, batch {a.train_batch}, {a.train_size}x{a.train_size}")
        rows.append(_train_pair(bench, pair))
    bench.results["training"] = rows
