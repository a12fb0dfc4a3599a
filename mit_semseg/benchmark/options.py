"""What a benchmark run measures: :class:`BenchmarkOptions` (one field per flag of
``python -m mit_semseg benchmark``, same names and defaults) and
:func:`resolve_options`, which applies the presets, ``--cfg`` files and the
device's precisions and refuses unknown sections, methods, precisions and
pairs (:class:`BenchmarkError`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ..errors import MitSemsegError

__all__ = ["BenchmarkError", "BenchmarkOptions", "resolve_options", "SECTIONS",
           "DEFAULT_SECTIONS", "DEFAULT_PAIRS", "DEFAULT_TRAIN_PAIRS", "TARGET_SINGLE_PAIRS",
           "DEFAULT_SCALES", "PRESETS", "OMP_WAIT_POLICIES"]

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
PRECISIONS = ("fp32", "bf16", "fp16")

# --preset quick: these replace the fields left at their defaults
_QUICK: dict[str, Any] = dict(
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
    (the preset, ``cfg`` or the device). ``json`` and ``omp_wait_policy`` are
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
    scales: tuple[int, ...] = DEFAULT_SCALES
    max_size: int = 1000
    padding: int = 8
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


def default_of(name: str) -> Any:
    """The default of field ``name`` of :class:`BenchmarkOptions` (a fresh copy)."""
    f = next(f for f in dataclasses.fields(BenchmarkOptions) if f.name == name)
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


def _check_pair(spec: str) -> None:
    """Refuse what ``harness.Pair`` cannot build, before any section runs."""
    from .harness import FC_DIM
    if "+" not in spec:
        raise BenchmarkError(f"pair '{spec}' must be ENCODER+DECODER, "
                             "e.g. resnet50dilated+ppm_deepsup")
    encoder = spec.split("+", 1)[0].strip().lower()
    if encoder not in FC_DIM:
        raise BenchmarkError(f"unknown encoder '{encoder}'; expected one of {sorted(FC_DIM)}")


def _check_methods(methods: list[str]) -> None:
    """Refuse unknown method names, naming the valid ones (and the new name of an
    earlier one)."""
    from .inference import METHODS, REDUCED, RENAMED
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
        for name, value in _QUICK.items():
            if getattr(o, name) is None or getattr(o, name) == default_of(name):
                setattr(o, name, value)
    elif o.preset == "targets":
        if o.single_pairs is None and o.pairs is None:
            o.single_pairs = list(TARGET_SINGLE_PAIRS)
        if o.sections is None:
            o.sections = list(DEFAULT_SECTIONS) + ["testpy"]
    if o.cfg:
        from ..config import cfg as base_cfg
        pairs = []
        for path in o.cfg:
            c = base_cfg.clone()
            c.merge_from_file(path)
            pairs.append(f"{c.MODEL.arch_encoder}+{c.MODEL.arch_decoder}")
            o.num_class = int(c.DATASET.num_class)
            o.scales = tuple(int(s) for s in (c.DATASET.imgSizes if isinstance(
                c.DATASET.imgSizes, (list, tuple)) else (c.DATASET.imgSizes,)))
            o.max_size = int(c.DATASET.imgMaxSize)
            o.padding = int(c.DATASET.padding_constant)
        o.pairs = o.pairs or pairs
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
        from .harness import bench_device, bf16_supported
        dev = bench_device(o.device)
        o.precisions = (["fp32"] + (["bf16"] if bf16_supported(dev) else [])
                        + (["fp16"] if dev.type == "cuda" else []))
    for prec in o.precisions:
        if prec not in PRECISIONS:
            raise BenchmarkError(f"unknown precision '{prec}'; expected fp32, bf16 and/or fp16")
    if o.omp_wait_policy not in OMP_WAIT_POLICIES:
        raise BenchmarkError(f"unknown OpenMP wait policy '{o.omp_wait_policy}'; expected one "
                             f"of {', '.join(OMP_WAIT_POLICIES)}")
    used = {"single": o.single_pairs, "multi": o.multi_pairs, "testpy": o.multi_pairs,
            "train": o.train_pairs, "data": o.train_pairs[:1],
            "slide": [o.slide_pair] if o.slide_pair else []}
    for section in o.sections:
        for spec in used.get(section, []):
            _check_pair(spec)
    return o
