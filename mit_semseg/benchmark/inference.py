"""Sections ``single`` and ``multi``: inference speed, memory and labels per method.

Methods (``--methods``; ``original`` joins with ``--compare-original``):

* ``original``: the original implementation in its worker process;
* ``plain``: this package's modules run by the original's procedure
  (``harness.original_inference``);
* ``exact``: ``InferenceEngine(exact=True)``, the modules as given;
* ``default``: ``InferenceEngine()``, the optimized inference copy and banded fusion;
* ``default-bf16`` / ``default-fp16``: the default engine at reduced precision
  (added for the precisions of ``--precisions``; opt-in for users).

Methods run alternately, run by run, so that load from other processes
affects them alike. Speedups and label agreement are relative to the
reference: ``original`` when present, else ``plain``, else ``exact``.
"""
from __future__ import annotations

import os
import time
from typing import Any

import numpy as np
import torch

from ..data.transforms import normalize
from .flops import count_gflops
from .harness import (Bench, MemoryProbe, Pair, Recorder, agreement, median,
                      original_inference, resize_rules, scene, summary, sync)

METHODS = ("plain", "exact", "default")
REDUCED = ("bf16", "fp16")
RENAMED = {"engine": "exact", "fast": "default", "fast-bf16": "default-bf16",
           "fast-fp16": "default-fp16"}


def methods_run(bench: Bench) -> list[str]:
    """The inference methods of this run, the reference first."""
    a = bench.options
    chosen = [m for m in METHODS if m in a.methods]
    reduced = [m for m in a.methods if m.startswith("default-")]
    if "default" in chosen:
        reduced += [f"default-{p}" for p in a.precisions if p in REDUCED]
    original = ["original"] if bench.worker is not None else []
    return original + chosen + list(dict.fromkeys(reduced))


def reference_of(methods: list[str]) -> str | None:
    return next((m for m in ("original", "plain", "exact") if m in methods), None)


def _engines(network: torch.nn.Module, methods: list[str],
             dev: torch.device) -> dict[str, Any]:
    from ..inference import InferenceEngine
    engines: dict[str, Any] = {}
    for m in methods:
        if m == "exact":
            engines[m] = InferenceEngine(network, device=dev, exact=True)
        elif m == "default":
            engines[m] = InferenceEngine(network, device=dev)
        elif m.startswith("default-"):
            engines[m] = InferenceEngine(network, device=dev, precision=m[len("default-"):])
    return engines


def _entry(bench: Bench, recorder: Recorder, m: str, gflops: float) -> dict[str, Any]:
    total = recorder.field(m, "total")
    model = recorder.field(m, "model")
    mem_key = "peak_rss_mb" if bench.device.type == "cpu" else "peak_alloc_mb"
    entry: dict[str, Any] = {
        "img_per_s": summary([1.0 / t for t in total]),
        "total_ms": summary([1e3 * t for t in total]),
        "model_ms": summary([1e3 * t for t in model]),
        "post_ms": summary([1e3 * t for t in recorder.field(m, "post")]),
        mem_key: max(recorder.field(m, "peak_mb"), default=None),
        "transient_mb": max(recorder.field(m, "delta_mb"), default=None),
        "gflops": gflops,
    }
    model_s = median(model)
    entry["achieved_gflops"] = gflops / model_s if model_s > 0 else None
    peak = bench.peaks.get(m[len("default-"):] if m.startswith("default-") else "fp32")
    entry["share_of_peak"] = (entry["achieved_gflops"] / peak
                              if peak and entry["achieved_gflops"] else None)
    return entry


def infer_case(bench: Bench, kind: str, pair: Pair, imgs: list[torch.Tensor],
               size: tuple[int, int]) -> dict[str, Any]:
    """Time every method on the resized copies ``imgs`` of one image of ``size``
    (H, W); compare the labels of the last run with the reference's."""
    a, dev, worker = bench.options, bench.device, bench.worker
    network = pair.build(use_softmax=True).to(dev)
    enc, dec = network.encoder, network.decoder
    imgs = [t.to(dev) for t in imgs]
    gflops = count_gflops(enc, dec, imgs)
    gflops_factorized = count_gflops(enc, dec, imgs, factorized=True)
    methods = methods_run(bench)
    engines = _engines(network, methods, dev)
    key = f"{kind}:{pair.name}"
    labels_path = os.path.join(bench.workdir, "orig_labels.pt")
    if worker is not None:
        inputs = os.path.join(bench.workdir, f"{kind}_inputs.pt")
        torch.save([t.cpu() for t in imgs], inputs)
        worker.call(cmd="load_infer", key=key, enc=pair.enc_arch, dec=pair.dec_arch,
                    fc_dim=pair.fc_dim, num_class=pair.num_class, enc_weights=pair.enc_weights,
                    dec_weights=pair.dec_weights, inputs=inputs)
    labels: dict[str, np.ndarray] = {}
    gaps: dict[str, np.ndarray] = {}

    def run(method: str, keep: bool) -> dict[str, float]:
        if method == "original":
            rec = worker.call(cmd="infer", key=key, size=list(size), num_class=pair.num_class,
                              labels_out=labels_path if keep else None)
            if keep:
                saved = torch.load(labels_path, weights_only=True)
                labels[method], gaps[method] = saved["labels"].numpy(), saved["gap"].numpy()
            return rec
        with MemoryProbe(dev) as mem:
            if method == "plain":
                lab, rec = original_inference(enc, dec, imgs, size, pair.num_class, dev, gap=keep)
                lab = lab.numpy()
                if "gap" in rec:
                    gaps[method] = rec.pop("gap").numpy()
            else:
                eng = engines[method]
                sync(dev)
                t0 = time.perf_counter()
                logits = eng.scale_logits(imgs)
                sync(dev)
                t1 = time.perf_counter()
                lab = eng.fuse(logits, size).labels
                sync(dev)
                t2 = time.perf_counter()
                rec = {"total": t2 - t0, "model": t1 - t0, "post": t2 - t1}
        if keep:
            labels[method] = lab
        return {**rec, "peak_mb": mem.peak_mb, "delta_mb": mem.delta_mb}

    recorder = Recorder()
    for _ in range(a.warmup):
        for m in methods:
            run(m, keep=False)
    for r in range(a.runs):
        for m in methods:
            recorder.add(m, run(m, keep=(r == a.runs - 1)))
    if worker is not None:
        worker.call(cmd="free", key=key)

    ref = reference_of(methods)
    out: dict[str, Any] = {"pair": pair.name, "size": list(size),
                           "input_sizes": [list(t.shape[2:]) for t in imgs],
                           "gflops": gflops, "reference": ref, "methods": {}}
    for m in methods:
        entry = _entry(bench, recorder, m, gflops_factorized if m.startswith("default") else gflops)
        if ref is not None and m != ref:
            entry["speedup"] = (median([1.0 / t for t in recorder.field(m, "total")])
                                / median([1.0 / t for t in recorder.field(ref, "total")]))
            entry["agreement_vs_" + ref] = agreement(labels.get(m), labels.get(ref))
            mine, theirs = labels.get(m), labels.get(ref)
            if mine is not None and theirs is not None and ref in gaps:
                differ = mine != theirs
                entry["differing_pixels"] = int(differ.sum())
                entry["max_ref_gap_at_differing"] = (float(gaps[ref][differ].max())
                                                     if differ.any() else None)
        if m.startswith("default-"):
            entry["agreement_vs_default_fp32"] = agreement(labels.get(m), labels.get("default"))
        out["methods"][m] = entry
    return out


def run_single(bench: Bench) -> None:
    """Section ``single``: one ``--size`` square image, one scale, per single pair."""
    a = bench.options
    img = normalize(scene(a.size, a.size, seed=1)).unsqueeze(0).contiguous()
    rows = []
    for spec in a.single_pairs:
        pair = Pair(spec, a.num_class, bench.workdir, (a.pair_options or {}).get(spec))
        bench.log(f"single-scale {pair.name} {a.size}x{a.size}")
        rows.append(infer_case(bench, "single", pair, [img], (a.size, a.size)))
    bench.results["single_scale"] = rows


def run_multi(bench: Bench) -> None:
    """Section ``multi``: one ``--photo`` image at the ``--scales``, per multi pair."""
    a = bench.options
    rows = []
    h, w = a.photo
    imgs = resize_rules(a.scales, a.max_size, a.padding).scales(scene(h, w, seed=2))
    for spec in a.multi_pairs:
        pair = Pair(spec, a.num_class, bench.workdir, (a.pair_options or {}).get(spec))
        bench.log(f"multi-scale {pair.name} {w}x{h} photo, scales {list(a.scales)}")
        row = infer_case(bench, "multi", pair, imgs, (h, w))
        row["scales"] = list(a.scales)
        rows.append(row)
    bench.results["multi_scale"] = rows
