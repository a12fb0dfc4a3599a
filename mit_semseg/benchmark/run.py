"""One benchmark run: :func:`run_benchmark` measures the sections of a
:class:`~mit_semseg.benchmark.options.BenchmarkOptions` and returns the
results (the command, ``python -m mit_semseg benchmark``, prints them with
``report.format_report`` and ``slide.format_slide`` and writes the JSON).

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
from .harness import REPO_ROOT, Bench, cpu_name, load_avg
from .inference import run_multi, run_single
from .metrics import run_metrics
from .options import SECTIONS, BenchmarkError, BenchmarkOptions, resolve_options
from .slide import run_slide
from .testpy import run_testpy
from .training import run_train

__all__ = ["RUNNERS", "run_benchmark"]

RUNNERS: dict[str, Callable[[Bench], None]] = {
    "peak": run_peak, "single": run_single, "multi": run_multi, "train": run_train,
    "testpy": run_testpy, "data": run_data, "metrics": run_metrics, "slide": run_slide}
assert tuple(RUNNERS) == SECTIONS


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
