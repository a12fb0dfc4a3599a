"""What a benchmark run measures: :class:`BenchmarkOptions`, one field per flag
of ``python -m mit_semseg benchmark`` (same names and defaults), the presets
and sections. ``run.resolve_options`` decides what is left open and refuses
what cannot run (:class:`BenchmarkError`). This module imports nothing of the
benchmark, so that every section may name the options' type.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ..errors import MitSemsegError

__all__ = ["BenchmarkError", "BenchmarkOptions", "default_of", "SECTIONS",
           "DEFAULT_SECTIONS", "DEFAULT_PAIRS", "DEFAULT_TRAIN_PAIRS", "TARGET_SINGLE_PAIRS",
           "DEFAULT_SCALES", "PRESETS", "QUICK", "OMP_WAIT_POLICIES", "PRECISIONS"]

DEFAULT_PAIRS = ("mobilenetv2dilated+c1_deepsup", "resnet50dilated+ppm_deepsup")
DEFAULT_TRAIN_PAIRS = ("mobilenetv2dilated+c1_deepsup", "resnet18dilated+ppm_deepsup")
TARGET_SINGLE_PAIRS = ("mobilenetv2dilated+c1_deepsup", "resnet50dilated+ppm_deepsup",
                       "resnet50+upernet", "hrnetv2+c1")
DEFAULT_SCALES = (300, 375, 450, 525, 600)
# every section, in the order they run
SECTIONS = ("peak", "single", "multi", "train", "testpy", "data", "metrics", "slide")
DEFAULT_SECTIONS = ("peak", "single", "multi", "train", "data", "metrics")
PRESETS = ("default", "quick", "targets")
OMP_WAIT_POLICIES = ("default", "passive", "active")
PRECISIONS = ("fp32", "bf16", "fp16", "int8")

# --preset quick: these replace the fields left at their defaults
# what scales / max_size / padding become without a flag or a config
SIZE_DEFAULTS: dict[str, Any] = dict(scales=DEFAULT_SCALES, max_size=1000, padding=8)

QUICK: dict[str, Any] = dict(
    pairs=["resnet18dilated+c1_deepsup"], train_pairs=["resnet18dilated+c1_deepsup"],
    size=64, photo=(48, 64), scales=(32, 48), max_size=100, train_size=64, train_iters=2,
    data_batches=2, data_images=4, data_workers=[0], metrics_size=256, mm_size=256, runs=1,
    warmup=1, threads=1, testpy_images=2)


class BenchmarkError(MitSemsegError):
    """A benchmark option the run cannot use (unknown section, method, pair...)."""


@dataclass
class BenchmarkOptions:
    """A benchmark run's settings; the flags of ``python -m mit_semseg benchmark``
    (``--help`` explains each). None means "decided by :func:`resolve_options`"
    (the preset, ``cfg`` or the device; ``run.resolve_options``). ``json`` and ``omp_wait_policy`` are
    acted on by the command (writing the results, re-executing with
    ``OMP_WAIT_POLICY``); all fields are recorded in the results' ``settings``."""

    preset: str = "default"
    pairs: list[str] | None = None
    single_pairs: list[str] | None = None
    multi_pairs: list[str] | None = None
    train_pairs: list[str] | None = None
    cfg: list[str] | None = None
    sections: list[str] | None = None
    methods: list[str] = field(default_factory=lambda: ["plain", "exact", "default"])
    precisions: list[str] | None = None
    size: int = 512
    photo: tuple[int, int] = (480, 640)
    # None: the --cfg file's DATASET.imgSizes / imgMaxSize / padding_constant, else
    # SIZE_DEFAULTS (decided by resolve_options)
    scales: tuple[int, ...] | None = None
    max_size: int | None = None
    padding: int | None = None
    num_class: int = 150
    train_batch: int = 2
    train_size: int = 256
    train_iters: int = 5
    data_batches: int = 8
    data_images: int = 16
    data_workers: list[int] = field(default_factory=lambda: [0, 2])
    metrics_size: int = 2048
    mm_size: int = 2048
    runs: int = 3
    warmup: int = 1
    threads: int = 0
    omp_wait_policy: str = "default"
    device: str = "auto"
    compare_original: str | None = None
    original_repo: str | None = None
    testpy_images: int = 6
    json: str | None = None
    quiet: bool = False
    slide_photo: tuple[int, int] | None = None
    slide_pair: str | None = None
    slide_crop: tuple[int, int] | None = None
    slide_stride: tuple[int, int] | None = None
    slide_scale: float = 1.0
    slide_flip: bool = False
    # no flag: each ``--cfg`` pair's MODEL.encoder_options ("enc+dec" -> options),
    # filled by resolve_options
    pair_options: dict[str, dict[str, Any]] | None = None


def default_of(name: str) -> Any:
    """The default of field ``name`` of :class:`BenchmarkOptions` (a fresh copy)."""
    f = next(f for f in dataclasses.fields(BenchmarkOptions) if f.name == name)
    return f.default_factory() if f.default is dataclasses.MISSING else f.default
