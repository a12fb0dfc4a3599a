"""``python -m mit_semseg benchmark``: speed and memory, measured.

The flags become a :class:`mit_semseg.benchmark.BenchmarkOptions` (same names
and defaults); :func:`mit_semseg.benchmark.run_benchmark` measures; this
module prints the tables, writes ``--json`` and re-executes itself for
``--omp-wait-policy``.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from typing import Sequence

from ..runtime.command import (DEVICES_HELP, CommandParser, command_parser, parse_command,
                               run_command)

_DESCRIPTION = "Measure inference, training, data-loading and metrics speed and memory."


def _size_pair(text: str) -> tuple[int, int]:
    parts = text.lower().replace("*", "x").split("x")
    if len(parts) == 1:
        return int(parts[0]), int(parts[0])
    return int(parts[0]), int(parts[1])


def _slide_size(text: str) -> tuple[int, int]:
    parts = text.lower().replace("*", "x").split("x")
    return int(parts[0]), int(parts[-1])


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


# (flag, BenchmarkOptions field, help) of the comma-separated pair lists and the integers
_PAIR_OPTIONS = (
    ("--pairs", "pairs", "ENCODER+DECODER pairs for single- and multi-scale inference; any "
     "registered encoder, e.g. timm:convnext_tiny+upernet (the [timm] extra)"),
    ("--single-pairs", "single_pairs", "pairs for single-scale only"),
    ("--multi-pairs", "multi_pairs", "pairs for multi-scale only"),
    ("--train-pairs", "train_pairs", "pairs for training"),
)
_INT_OPTIONS = (
    ("--size", "size", "single-scale image side"),
    ("--max-size", "max_size", "DATASET.imgMaxSize (unset: the --cfg file's, else 1000)"),
    ("--padding", "padding", "DATASET.padding_constant (unset: the --cfg file's, else 8)"),
    ("--num-class", "num_class", "classes of the decoders"),
    ("--train-batch", "train_batch", "training images per iteration"),
    ("--train-size", "train_size", "training image side"),
    ("--train-iters", "train_iters", "timed training iterations"),
    ("--data-batches", "data_batches", "timed data-loader batches"),
    ("--data-images", "data_images", "synthetic training images written for the data-loader "
                                     "test"),
    ("--metrics-size", "metrics_size", "side of the prediction/label maps of the metrics test"),
    ("--mm-size", "mm_size", "matmul peak problem size"),
    ("--runs", "runs", "timed runs per measurement"),
    ("--warmup", "warmup", "untimed runs first"),
)


def build_parser() -> CommandParser:
    """The command's parser; every default is :class:`BenchmarkOptions`'."""
    from ..benchmark.options import OMP_WAIT_POLICIES, PRESETS, SECTIONS, default_of as d
    from ..benchmark.slide import DEFAULTS as SLIDE
    p = command_parser("python -m mit_semseg benchmark", _DESCRIPTION, overrides=False,
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--preset", choices=PRESETS, default=d("preset"),
                   help="quick: tiny sizes, one pair, one run (seconds); targets: the speed "
                        "targets' set: 4 single-scale pairs and the testpy section (longer; "
                        "with --compare-original and --original-repo side by side with the "
                        "original)")
    p.add_argument("--quick", action="store_const", const="quick", dest="preset",
                   help="same as --preset quick")
    for flag, key, text in _PAIR_OPTIONS:
        p.add_argument(flag, type=_csv, default=d(key), help=text)
    p.add_argument("--cfg", nargs="+", default=d("cfg"),
                   help="take pairs (inference and, unless --train-pairs, training), "
                        "their MODEL.encoder_options, class count and multi-scale settings "
                        "from config files, e.g. --cfg config/ade20k-convnext_tiny-upernet.yaml "
                        "config/ade20k-swin_tiny-upernet.yaml")
    p.add_argument("--sections", type=_csv, default=d("sections"),
                   help=f"what to measure, some of {','.join(SECTIONS)}; unset: all but "
                        "testpy, which times test.py as whole processes, and slide")
    p.add_argument("--methods", type=_csv, default=d("methods"),
                   help="inference methods: plain (this package's modules, the original's "
                        "procedure), exact (InferenceEngine(exact=True)), default "
                        "(InferenceEngine(), what eval.py/test.py run); default-bf16 / "
                        "default-fp16 join default for the --precisions; training runs exact "
                        "and default (and default-bf16). With --compare-original, 'original' "
                        "comes first and is the reference of speedups and labels")
    p.add_argument("--precisions", type=_csv, default=d("precisions"),
                   help="fp32, bf16, fp16, int8 (default: fp32, bf16 where the hardware has it, "
                        "fp16 on CUDA); training uses bf16 only (fp16 training: train.py's "
                        "TRAIN.precision with its GradScaler); int8: onnxruntime int8 rows of "
                        "the single pairs (export, quantize, time; benchmark/int8.py)")
    p.add_argument("--photo", type=_size_pair, default=d("photo"),
                   help="photo size HxW of multi-scale inference and testpy")
    p.add_argument("--scales", type=lambda t: tuple(int(x) for x in _csv(t)),
                   default=d("scales"), help="multi-scale short sides, comma-separated "
                   "(DATASET.imgSizes; unset: the --cfg file's, else 300,375,450,525,600)")
    for flag, key, text in _INT_OPTIONS:
        p.add_argument(flag, type=int, default=d(key), help=text)
    p.add_argument("--data-workers", type=lambda t: [int(x) for x in _csv(t)],
                   default=d("data_workers"), help="DataLoader worker counts to measure")
    p.add_argument("--threads", type=int, default=d("threads"),
                   help="intra-op threads (0: torch default)")
    p.add_argument("--omp-wait-policy", choices=OMP_WAIT_POLICIES,
                   default=d("omp_wait_policy"),
                   help="OpenMP waiting; passive is far more robust on a machine shared with "
                        "other jobs (re-executes the command with OMP_WAIT_POLICY set)")
    p.add_argument("--gpus", "--device", dest="device", default=d("device"), metavar="SPEC",
                   help=f"one device; {DEVICES_HELP}")
    p.add_argument("--compare-original", metavar="PYTHON", default=d("compare_original"),
                   help="interpreter with the original implementation installed "
                        "(e.g. /tmp/orig_venv/bin/python); adds the 'original' method")
    p.add_argument("--original-repo", metavar="DIR", default=d("original_repo"),
                   help="a checkout of the original repository: testpy also times its "
                        "test.py, run by the --compare-original interpreter in DIR")
    p.add_argument("--testpy-images", type=int, default=d("testpy_images"),
                   help="testpy: photo-like images of --photo size that test.py segments")
    p.add_argument("--json", metavar="PATH", default=d("json"),
                   help="also write the results as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    p.add_argument("--slide-photo", type=_slide_size, default=d("slide_photo"),
                   help="slide section: photo size HxW (default 1500x2000; 3000x4000 "
                        "for 12 MP)")
    p.add_argument("--slide-pair", default=d("slide_pair"),
                   help=f"slide section: ENCODER+DECODER (default {SLIDE['pair']})")
    p.add_argument("--slide-crop", type=_slide_size, default=d("slide_crop"),
                   help="slide section: tile size (TEST.crop_size, default 512)")
    p.add_argument("--slide-stride", type=_slide_size, default=d("slide_stride"),
                   help="slide section: tile step (TEST.stride, default 341)")
    p.add_argument("--slide-scale", type=float, default=d("slide_scale"),
                   help="slide section: TEST.slide_scale")
    p.add_argument("--slide-flip", action="store_true",
                   help="slide section: also run every tile mirrored (TEST.flip)")
    return p


def _reexec_with_policy(policy: str, argv: Sequence[str]) -> int | None:
    """The exit status of this command re-run with ``OMP_WAIT_POLICY=policy``; None
    when it is already set so."""
    wanted = policy.upper()
    if os.environ.get("OMP_WAIT_POLICY", "").upper() == wanted:
        return None
    env = dict(os.environ, OMP_WAIT_POLICY=wanted)
    return subprocess.call([sys.executable, "-m", "mit_semseg", "benchmark", *argv], env=env)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_command(build_parser(), argv)

    def body() -> int:
        from ..benchmark import BenchmarkOptions, format_report, run_benchmark
        from ..benchmark.int8 import format_int8
        from ..benchmark.slide import format_slide
        if args.omp_wait_policy != "default":
            code = _reexec_with_policy(args.omp_wait_policy, argv)
            if code is not None:
                return code
        results = run_benchmark(BenchmarkOptions(**vars(args)))
        print(format_report(results) + format_slide(results) + format_int8(results))
        if args.json:
            with open(args.json, "w", encoding="utf-8") as f:
                json.dump(results, f, indent=1)
        return 0
    return run_command(body)
