"""The command line: ``python -m mit_semseg benchmark [options]``.

Sections (``--sections``): peak (matmul GFLOP/s), single and multi
(inference, inference.py), train (training.py), data (data.py), metrics
(metrics.py) and, opt-in, testpy (test.py whole process, testpy.py) and slide
(sliding-window inference and its stitching overhead, slide.py). Weights
follow the parity rule (harness.rule_tensor; no download). The report's
header names the device and what this machine's kernels guarantee
(``fused_conv_exact``, ``banding_exact``).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
from typing import Any, Sequence

import torch

from ..accel import fused_conv_exact
from ..inference.fusion import banding_exact
from ..runtime.command import DEVICES_HELP
from ..runtime.process import allocator_state, tune_allocator
from .data import run_data
from .flops import run_peak
from .harness import REPO_ROOT, Bench, bench_device, bf16_supported, cpu_name, load_avg
from .inference import check_methods, run_multi, run_single
from .int8 import format_int8, run_int8
from .metrics import run_metrics
from .report import format_report
from .slide import add_arguments as add_slide_arguments, format_slide, run_slide
from .testpy import run_testpy
from .training import run_train

DEFAULT_PAIRS = ("mobilenetv2dilated+c1_deepsup", "resnet50dilated+ppm_deepsup")
DEFAULT_TRAIN_PAIRS = ("mobilenetv2dilated+c1_deepsup", "resnet18dilated+ppm_deepsup")
TARGET_SINGLE_PAIRS = ("mobilenetv2dilated+c1_deepsup", "resnet50dilated+ppm_deepsup",
                       "resnet50+upernet", "hrnetv2+c1")
DEFAULT_SCALES = (300, 375, 450, 525, 600)
RUNNERS = {"peak": run_peak, "single": run_single, "multi": run_multi, "train": run_train,
           "testpy": run_testpy, "data": run_data, "metrics": run_metrics, "slide": run_slide}
SECTIONS = tuple(RUNNERS)
DEFAULT_SECTIONS = ("peak", "single", "multi", "train", "data", "metrics")


def _size_pair(text: str) -> tuple[int, int]:
    parts = text.lower().replace("*", "x").split("x")
    if len(parts) == 1:
        return int(parts[0]), int(parts[0])
    h, w = int(parts[0]), int(parts[1])
    return h, w


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m mit_semseg benchmark",
        description="Measure inference, training, data-loading and metrics speed and memory.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--preset", choices=("default", "quick", "targets"), default="default",
                   help="quick: tiny sizes, one pair, one run (seconds); targets: the speed "
                        "targets' set: 4 single-scale pairs and the testpy section (longer; "
                        "with --compare-original and --original-repo side by side with the "
                        "original)")
    p.add_argument("--quick", action="store_const", const="quick", dest="preset",
                   help="same as --preset quick")
    p.add_argument("--pairs", type=_csv, default=None,
                   help="ENCODER+DECODER pairs for single- and multi-scale inference")
    p.add_argument("--single-pairs", type=_csv, default=None, help="pairs for single-scale only")
    p.add_argument("--multi-pairs", type=_csv, default=None, help="pairs for multi-scale only")
    p.add_argument("--train-pairs", type=_csv, default=None, help="pairs for training")
    p.add_argument("--cfg", nargs="+", default=None,
                   help="take pairs, class count and multi-scale settings from config files")
    p.add_argument("--sections", type=_csv, default=None,
                   help=f"what to measure, some of {','.join(SECTIONS)}; unset: all but "
                        "testpy, which times test.py as whole processes, and slide")
    p.add_argument("--methods", type=_csv, default=["plain", "exact", "default"],
                   help="inference methods: plain (this package's modules, the original's "
                        "procedure), exact (InferenceEngine(exact=True)), default "
                        "(InferenceEngine(), what eval.py/test.py run); default-bf16 / "
                        "default-fp16 join default for the --precisions; training runs exact "
                        "and default (and default-bf16). With --compare-original, 'original' "
                        "comes first and is the reference of speedups and labels")
    p.add_argument("--precisions", type=_csv, default=None,
                   help="fp32, bf16, fp16, int8 (default: fp32, bf16 where the hardware has it, "
                        "fp16 on CUDA); training uses bf16 only (fp16 training: train.py's "
                        "TRAIN.precision with its GradScaler); int8: onnxruntime int8 rows of "
                        "the single pairs (export, quantize, time; int8.py)")
    p.add_argument("--size", type=int, default=512, help="single-scale image side")
    p.add_argument("--photo", type=_size_pair, default=(480, 640),
                   help="photo size HxW of multi-scale inference and testpy")
    p.add_argument("--scales", type=lambda t: tuple(int(x) for x in _csv(t)),
                   default=DEFAULT_SCALES, help="multi-scale short sides (DATASET.imgSizes)")
    p.add_argument("--max-size", type=int, default=1000, help="DATASET.imgMaxSize")
    p.add_argument("--padding", type=int, default=8, help="DATASET.padding_constant")
    p.add_argument("--num-class", type=int, default=150, help="classes of the decoders")
    p.add_argument("--train-batch", type=int, default=2, help="training images per iteration")
    p.add_argument("--train-size", type=int, default=256, help="training image side")
    p.add_argument("--train-iters", type=int, default=5, help="timed training iterations")
    p.add_argument("--data-batches", type=int, default=8, help="timed data-loader batches")
    p.add_argument("--data-images", type=int, default=16,
                   help="synthetic training images written for the data-loader test")
    p.add_argument("--data-workers", type=lambda t: [int(x) for x in _csv(t)], default=[0, 2],
                   help="DataLoader worker counts to measure")
    p.add_argument("--metrics-size", type=int, default=2048,
                   help="side of the prediction/label maps of the metrics test")
    p.add_argument("--mm-size", type=int, default=2048, help="matmul peak problem size")
    p.add_argument("--runs", type=int, default=3, help="timed runs per measurement")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs first")
    p.add_argument("--threads", type=int, default=0, help="intra-op threads (0: torch default)")
    p.add_argument("--omp-wait-policy", choices=("default", "passive", "active"),
                   default="default",
                   help="OpenMP waiting; passive is far more robust on a machine shared with "
                        "other jobs (re-executes the command with OMP_WAIT_POLICY set)")
    p.add_argument("--gpus", "--device", dest="device", default="auto", metavar="SPEC",
                   help=f"one device; {DEVICES_HELP}")
    p.add_argument("--compare-original", metavar="PYTHON", default=None,
                   help="interpreter with the original implementation installed "
                        "(e.g. /tmp/orig_venv/bin/python); adds the 'original' method")
    p.add_argument("--original-repo", metavar="DIR", default=None,
                   help="a checkout of the original repository: testpy also times its "
                        "test.py, run by the --compare-original interpreter in DIR")
    p.add_argument("--testpy-images", type=int, default=6,
                   help="testpy: photo-like images of --photo size that test.py segments")
    p.add_argument("--json", metavar="PATH", default=None, help="also write the results as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    add_slide_arguments(p)
    return p


def _apply_preset(args: argparse.Namespace) -> None:
    if args.preset == "quick":
        defaults = dict(pairs=["resnet18dilated+c1_deepsup"],
                        train_pairs=["resnet18dilated+c1_deepsup"],
                        size=64, photo=(48, 64), scales=(32, 48), max_size=100, train_size=64,
                        train_iters=2, data_batches=2, data_images=4, data_workers=[0],
                        metrics_size=256, mm_size=256, runs=1, warmup=1, threads=1,
                        testpy_images=2)
        for k, v in defaults.items():
            if getattr(args, k) == build_parser().get_default(k) or getattr(args, k) is None:
                setattr(args, k, v)
    elif args.preset == "targets":
        if args.single_pairs is None and args.pairs is None:
            args.single_pairs = list(TARGET_SINGLE_PAIRS)
        if args.sections is None:
            args.sections = list(DEFAULT_SECTIONS) + ["testpy"]
    if args.cfg:
        from ..config import cfg as base_cfg
        pairs = []
        for path in args.cfg:
            c = base_cfg.clone()
            c.merge_from_file(path)
            pairs.append(f"{c.MODEL.arch_encoder}+{c.MODEL.arch_decoder}")
            args.num_class = int(c.DATASET.num_class)
            args.scales = tuple(int(s) for s in (c.DATASET.imgSizes if isinstance(
                c.DATASET.imgSizes, (list, tuple)) else (c.DATASET.imgSizes,)))
            args.max_size = int(c.DATASET.imgMaxSize)
            args.padding = int(c.DATASET.padding_constant)
        args.pairs = args.pairs or pairs
    pairs = args.pairs or list(DEFAULT_PAIRS)
    args.single_pairs = args.single_pairs or pairs
    args.multi_pairs = args.multi_pairs or pairs
    if args.train_pairs is None:
        args.train_pairs = list(DEFAULT_TRAIN_PAIRS)
    args.sections = args.sections or list(DEFAULT_SECTIONS)
    for s in args.sections:
        if s not in SECTIONS:
            raise SystemExit(f"unknown section '{s}'; expected some of {','.join(SECTIONS)}")
    check_methods(args.methods)
    if args.precisions is None:
        dev = bench_device(args.device)
        args.precisions = (["fp32"] + (["bf16"] if bf16_supported(dev) else [])
                           + (["fp16"] if dev.type == "cuda" else []))
    for prec in args.precisions:
        if prec not in ("fp32", "bf16", "fp16", "int8"):
            raise SystemExit(f"unknown precision '{prec}'; expected fp32, bf16, fp16 and/or int8")


def _reexec_with_policy(policy: str, argv: Sequence[str]) -> None:
    wanted = policy.upper()
    if os.environ.get("OMP_WAIT_POLICY", "").upper() == wanted:
        return
    env = dict(os.environ, OMP_WAIT_POLICY=wanted)
    code = subprocess.call([sys.executable, "-m", "mit_semseg", "benchmark", *argv], env=env)
    raise SystemExit(code)


def _original_worker_class() -> type:
    """``OriginalWorker`` from the repository's ``tools/original_worker.py`` (a developer
    tool that is not installed with the package)."""
    path = os.path.join(REPO_ROOT, "tools", "original_worker.py")
    if not os.path.isfile(path):
        raise SystemExit(f"error: --compare-original needs a checkout of the repository "
                         f"({path} not found); run the benchmark from the checkout")
    spec = importlib.util.spec_from_file_location("mit_semseg_tools_original_worker", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module.OriginalWorker


def _start(bench: Bench) -> None:
    """Threads, the machine's facts (device, kernels' bit-identities) and the original's worker."""
    a, dev = bench.args, bench.device
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


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; print the tables (and write JSON with --json); return the results."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.omp_wait_policy != "default":
        _reexec_with_policy(args.omp_wait_policy, argv)
    _apply_preset(args)
    tune_allocator()  # as train.py / eval.py / test.py do; MIT_SEMSEG_MALLOC=system: off
    bench = Bench(args)
    threads_before = torch.get_num_threads()
    try:
        _start(bench)
        if "peak" not in args.sections and ({"single", "multi"} & set(args.sections)):
            run_peak(bench)  # the share of peak needs it
        for section in SECTIONS:
            if section in args.sections:
                RUNNERS[section](bench)
        if "int8" in args.precisions:
            run_int8(bench)
    finally:
        if bench.worker is not None:
            bench.worker.close()
        bench.results.setdefault("machine", {})["load_avg_end"] = load_avg()
        torch.set_num_threads(threads_before)
        shutil.rmtree(bench.workdir, ignore_errors=True)
    results = bench.results
    results["settings"] = {k: (list(v) if isinstance(v, tuple) else v)
                           for k, v in vars(args).items()}
    print(format_report(results) + format_slide(results) + format_int8(results))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=1)
    return results
