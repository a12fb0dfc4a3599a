"""One benchmark run: :func:`resolve_options` decides what a
:class:`~mit_semseg.benchmark.options.BenchmarkOptions` leaves open and
refuses what cannot run; :func:`run_benchmark` measures its sections and
returns the results (the command, ``python -m mit_semseg benchmark``, prints
them with ``report.format_report`` and ``slide.format_slide`` and writes the
JSON).

Sections: peak (matmul GFLOP/s), single and multi (inference, inference.py),
train (training.py), data (data.py), metrics (metrics.py) and, opt-in, testpy
(test.py whole process, testpy.py) and slide (sliding-window inference and its
stitching overhead, slide.py). Weights follow the parity rule
(harness.rule_tensor; no download). The results' ``machine`` names the device
and what this machine's kernels guarantee (``fused_conv_exact``,
``banding_exact``).
"""
from __future__ import annotations

import dataclasses
import importlib.util
import os
import platform
import shutil
import sys
from typing import Any, Callable

import torch

from ..accel import fused_conv_exact
from ..inference.fusion import banding_exact
from ..runtime.process import allocator_state
from .data import run_data
from .flops import run_peak
from .harness import FC_DIM, REPO_ROOT, Bench, bench_device, bf16_supported, cpu_name, load_avg
from .int8 import run_int8
from .inference import METHODS, REDUCED, RENAMED, run_multi, run_single
from .metrics import run_metrics
from .options import (DEFAULT_PAIRS, DEFAULT_SECTIONS, DEFAULT_TRAIN_PAIRS, OMP_WAIT_POLICIES,
                      PRECISIONS, PRESETS, QUICK, SECTIONS, SIZE_DEFAULTS, TARGET_SINGLE_PAIRS,
                      BenchmarkError, BenchmarkOptions, default_of)
from .slide import run_slide
from .testpy import run_testpy
from .training import run_train

__all__ = ["RUNNERS", "resolve_options", "run_benchmark"]

RUNNERS: dict[str, Callable[[Bench], None]] = {
    "peak": run_peak, "single": run_single, "multi": run_multi, "train": run_train,
    "testpy": run_testpy, "data": run_data, "metrics": run_metrics, "slide": run_slide}
assert tuple(RUNNERS) == SECTIONS


def _check_pair(spec: str, original: bool = False) -> None:
    """Refuse what ``harness.Pair`` cannot build, before any section runs: a spec
    without "+", an encoder no family registered, and with ``original`` (the
    original implementation runs the pair too) an encoder the original lacks."""
    if "+" not in spec:
        raise BenchmarkError(f"pair '{spec}' must be ENCODER+DECODER, "
                             "e.g. resnet50dilated+ppm_deepsup")
    encoder = spec.split("+", 1)[0].strip().lower()
    if encoder in FC_DIM:
        return
    if original:
        raise BenchmarkError(f"--compare-original runs the original's encoders only "
                             f"({', '.join(sorted(FC_DIM))}), not '{encoder}'")
    from ..models.registry import encoder_factory
    try:
        encoder_factory(encoder)
    except ValueError as exc:  # "Unknown encoder 'x'; expected one of [...]"
        msg = str(exc)
        raise BenchmarkError(msg[:1].lower() + msg[1:]) from None


def _check_methods(methods: list[str]) -> None:
    """Refuse unknown method names, naming the valid ones (and the new name of an
    earlier one)."""
    valid = METHODS + tuple(f"default-{p}" for p in REDUCED)
    for m in methods:
        if m in RENAMED:
            raise BenchmarkError(f"method '{m}' is now '{RENAMED[m]}'")
        if m not in valid:
            raise BenchmarkError(f"unknown method '{m}'; expected some of {','.join(valid)}")


def resolve_options(options: BenchmarkOptions) -> BenchmarkOptions:
    """A copy of ``options`` with every None decided: the preset's values (for
    fields left at their defaults), pairs, class count and multi-scale sizes from
    the ``cfg`` files, the default pairs and sections, and the precisions the
    device has (fp32; bf16 where supported; fp16 on CUDA). Raises BenchmarkError
    for an unknown preset, section, method, precision or pair."""
    o = dataclasses.replace(options)
    if o.preset not in PRESETS:
        raise BenchmarkError(f"unknown preset '{o.preset}'; expected one of {', '.join(PRESETS)}")
    if o.preset == "quick":
        for name, value in QUICK.items():
            if o.cfg and name in ("pairs", "train_pairs"):
                continue  # the configs' models
            if getattr(o, name) is None or getattr(o, name) == default_of(name):
                setattr(o, name, value)
    elif o.preset == "targets":
        if o.single_pairs is None and o.pairs is None:
            o.single_pairs = list(TARGET_SINGLE_PAIRS)
        if o.sections is None:
            o.sections = list(DEFAULT_SECTIONS) + ["testpy"]
    given = {name for name in SIZE_DEFAULTS if getattr(o, name) is not None}  # flags, quick
    if o.cfg:
        from ..config import cfg as base_cfg
        pairs = []
        o.pair_options = dict(o.pair_options or {})
        for path in o.cfg:
            c = base_cfg.clone()
            c.merge_from_file(path)
            spec = f"{c.MODEL.arch_encoder}+{c.MODEL.arch_decoder}".lower()
            if spec in pairs:  # the same networks with other options: named by the file
                spec += "@" + os.path.splitext(os.path.basename(path))[0]
            pairs.append(spec)
            options = c.MODEL.get("encoder_options", {}) or {}
            if options:
                o.pair_options[spec] = _plain(options)
            o.num_class = int(c.DATASET.num_class)
            sizes = c.DATASET.imgSizes if isinstance(c.DATASET.imgSizes, (list, tuple)) \
                else (c.DATASET.imgSizes,)
            # the config's sizes unless a flag or the preset set them (several configs:
            # the last one's)
            for name, value in (("scales", tuple(int(v) for v in sizes)),
                                ("max_size", int(c.DATASET.imgMaxSize)),
                                ("padding", int(c.DATASET.padding_constant))):
                if name not in given:
                    setattr(o, name, value)
        o.pairs = o.pairs or pairs
        if o.train_pairs is None:
            o.train_pairs = list(pairs)  # the configs' models train too
    for name, value in SIZE_DEFAULTS.items():
        if getattr(o, name) is None:
            setattr(o, name, value)
    pairs = o.pairs or list(DEFAULT_PAIRS)
    o.single_pairs = o.single_pairs or pairs
    o.multi_pairs = o.multi_pairs or pairs
    if o.train_pairs is None:
        o.train_pairs = list(DEFAULT_TRAIN_PAIRS)
    o.sections = o.sections or list(DEFAULT_SECTIONS)
    for s in o.sections:
        if s not in SECTIONS:
            raise BenchmarkError(f"unknown section '{s}'; expected some of {','.join(SECTIONS)}")
    _check_methods(o.methods)
    if o.precisions is None:
        dev = bench_device(o.device)
        o.precisions = (["fp32"] + (["bf16"] if bf16_supported(dev) else [])
                        + (["fp16"] if dev.type == "cuda" else []))
    for prec in o.precisions:
        if prec not in PRECISIONS:
            raise BenchmarkError(f"unknown precision '{prec}'; expected fp32, bf16, fp16 "
                                 f"and/or int8")
    if o.omp_wait_policy not in OMP_WAIT_POLICIES:
        raise BenchmarkError(f"unknown OpenMP wait policy '{o.omp_wait_policy}'; expected one "
                             f"of {', '.join(OMP_WAIT_POLICIES)}")
    used = {"single": o.single_pairs, "multi": o.multi_pairs, "testpy": o.multi_pairs,
            "train": o.train_pairs, "data": o.train_pairs[:1],
            "slide": [o.slide_pair] if o.slide_pair else []}
    for section in o.sections:
        for spec in used.get(section, []):
            _check_pair(spec, original=bool(o.compare_original)
                        and section in ("single", "multi", "train", "testpy"))
    return o


def _plain(node: Any) -> Any:
    """A config node's value as plain Python (dicts, lists) for the results' settings."""
    if isinstance(node, dict):
        return {str(k): _plain(v) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return [_plain(v) for v in node]
    return node


def _original_worker_class() -> type:
    """``OriginalWorker`` from the repository's ``tools/original_worker.py`` (a developer
    tool that is not installed with the package)."""
    path = os.path.join(REPO_ROOT, "tools", "original_worker.py")
    if not os.path.isfile(path):
        raise BenchmarkError(f"--compare-original needs a checkout of the repository "
                             f"({path} not found); run the benchmark from the checkout")
    spec = importlib.util.spec_from_file_location("mit_semseg_tools_original_worker", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module.OriginalWorker


def _start(bench: Bench) -> None:
    """Threads, the machine's facts (device, kernels' bit-identities) and the original's worker."""
    a, dev = bench.options, bench.device
    if a.threads:
        torch.set_num_threads(a.threads)
    bench.results["machine"] = {
        "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else cpu_name(),
        "cpu_name": cpu_name(), "cpu_count": os.cpu_count(), "threads": torch.get_num_threads(),
        "torch": torch.__version__, "python": platform.python_version(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),
        "allocator": allocator_state(),
        "fused_conv_exact": fused_conv_exact(),
        "banding_exact": banding_exact(dev, a.num_class), "banding_classes": a.num_class,
        "load_avg_start": load_avg(),
    }
    if a.compare_original:
        bench.log(f"starting the original implementation: {a.compare_original}")
        bench.worker = _original_worker_class()(a.compare_original, torch.get_num_threads(),
                                                 dev, REPO_ROOT)
        bench.results["original"] = bench.worker.info


def run_benchmark(options: BenchmarkOptions) -> dict[str, Any]:
    """Measure the sections of ``options`` (resolved first, :func:`resolve_options`)
    and return the results: one entry per section, ``machine`` and ``settings``
    (the resolved options). Progress lines go to stderr unless ``options.quiet``;
    the thread count is restored and the scratch folder removed afterwards."""
    options = resolve_options(options)
    bench = Bench(options)
    threads_before = torch.get_num_threads()
    try:
        _start(bench)
        if "peak" not in options.sections and ({"single", "multi"} & set(options.sections)):
            run_peak(bench)  # the share of peak needs it
        for section in SECTIONS:
            if section in options.sections:
                RUNNERS[section](bench)
        if "int8" in options.precisions:
            run_int8(bench)
    finally:
        if bench.worker is not None:
            bench.worker.close()
        bench.results.setdefault("machine", {})["load_avg_end"] = load_avg()
        torch.set_num_threads(threads_before)
        shutil.rmtree(bench.workdir, ignore_errors=True)
    results = bench.results
    results["settings"] = {k: (list(v) if isinstance(v, tuple) else v)
                           for k, v in dataclasses.asdict(options).items()}
    return results
