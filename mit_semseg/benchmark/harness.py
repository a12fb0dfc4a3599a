"""The benchmark's shared harness: timing, memory, the parity weight rule, the
original toolkit's procedures (transcribed), encoder/decoder pairs, scenes and
run recorders.

Module-level imports are the standard library, numpy and torch only: the
original implementation's interpreter loads this file (through
``tools/original_worker.py``) without this package on its path. Imports of this
package happen inside the functions that our side alone calls.
"""
from __future__ import annotations

import contextlib
import math
import os
import statistics
import sys
import tempfile
import time
import zlib
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch
import torch.nn as nn

if TYPE_CHECKING:  # the original's interpreter loads this file without the package
    from .options import BenchmarkOptions

FC_DIM = {"mobilenetv2dilated": 320, "resnet18": 512, "resnet18dilated": 512,
          "resnet50": 2048, "resnet50dilated": 2048, "resnet101": 2048,
          "resnet101dilated": 2048, "resnext101": 2048, "hrnetv2": 720}


# ============================================================================ timing, memory

def sync(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def _proc_status(field: str) -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024.0  # kB -> MiB
    except OSError:
        pass
    return None


class MemoryProbe:
    """Peak memory over a block: RSS high-water mark on CPU (reset through
    /proc/self/clear_refs where the kernel allows it), max_memory_allocated on CUDA."""

    def __init__(self, device: torch.device | str) -> None:
        self.device = torch.device(device)
        self.peak_mb: float | None = None
        self.delta_mb: float | None = None

    def __enter__(self) -> "MemoryProbe":
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device) / 2 ** 20
        else:
            try:
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")  # reset VmHWM
            except OSError:
                pass
            self._base = _proc_status("VmRSS")
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.device.type == "cuda":
            self.peak_mb = torch.cuda.max_memory_allocated(self.device) / 2 ** 20
        else:
            self.peak_mb = _proc_status("VmHWM")
            if self.peak_mb is None:
                import resource
                self.peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
        if self.peak_mb is not None and self._base is not None:
            self.delta_mb = max(0.0, self.peak_mb - self._base)


# ============================================================================ weights, procedures

def rule_tensor(key: str, shape: Sequence[int]) -> torch.Tensor:
    """Deterministic weights by key name and shape (the rule of tests/parity/README.md)."""
    shape = tuple(shape)
    g = torch.Generator().manual_seed(zlib.crc32(key.encode()))
    if key.endswith("num_batches_tracked"):
        return torch.zeros(shape, dtype=torch.int64)
    if key.endswith("running_mean"):
        return torch.randn(shape, generator=g) * 0.1
    if key.endswith("running_var"):
        return torch.rand(shape, generator=g) * 0.5 + 0.75
    if len(shape) == 1 and key.endswith("weight"):
        return torch.rand(shape, generator=g) * 0.5 + 0.5
    if len(shape) == 1:
        return torch.randn(shape, generator=g) * 0.05
    fan_in = math.prod(shape[1:])
    scale = 10.0 if shape[0] == 150 else 1.0
    return torch.randn(shape, generator=g) * scale * (1.0 / fan_in) ** 0.5


class _Stamp:
    """Forward hook on the class layer: records when the class scores exist."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.t: float | None = None

    def __call__(self, module: nn.Module, inputs: Any, output: Any) -> None:
        sync(self.device)
        self.t = time.perf_counter()


def original_inference(encoder: nn.Module, decoder: nn.Module, imgs: Sequence[torch.Tensor],
                       size: tuple[int, int], num_class: int, device: torch.device,
                       gap: bool = False) -> tuple[torch.Tensor, dict[str, Any]]:
    """The original toolkit's eval procedure (eval.py / test.py), transcribed:
    per resized copy ``decoder(encoder(img), segSize)`` (interpolate + softmax
    inside the decoder built with use_softmax=True), ``scores = scores + p / n``,
    labels = argmax. Returns (labels [H, W] int64 on CPU, seconds {total, model, post});
    ``model`` runs until the class layer (the decoder's first ``class_layers``) has
    produced its scores.
    ``gap``: also return, untimed, the margin of the best class over the second
    (``times["gap"]``, [H, W] float32 on CPU) to tell float ties from real differences.
    """
    stamp = _Stamp(device)
    handle = decoder.get_submodule(decoder.class_layers[0]).register_forward_hook(stamp)
    model_s = 0.0
    try:
        sync(device)
        t0 = time.perf_counter()
        with torch.no_grad():
            scores = torch.zeros(1, num_class, size[0], size[1], device=device)
            for img in imgs:
                sync(device)
                ts = time.perf_counter()
                pred = decoder(encoder(img.to(device), return_feature_maps=True), segSize=size)
                assert stamp.t is not None
                model_s += stamp.t - ts
                scores = scores + pred / len(imgs)
            _, pred = torch.max(scores, dim=1)
            labels = pred[0].cpu()
        sync(device)
        total = time.perf_counter() - t0
    finally:
        handle.remove()
    out: dict[str, Any] = {"total": total, "model": model_s, "post": total - model_s}
    if gap:
        top2 = torch.topk(scores[0], 2, dim=0).values
        out["gap"] = (top2[0] - top2[1]).cpu()
    return labels, out


def original_train_step(module: nn.Module, optimizers: Sequence[torch.optim.Optimizer],
                        batch: dict[str, torch.Tensor], device: torch.device,
                        autocast: Any = None, seed: int | None = None) -> tuple[float, float]:
    """One iteration of the original's train loop, transcribed: zero_grad,
    forward (loss, acc), mean, backward, step every optimizer, ``loss.item()``.
    ``seed``: reseed torch first (same dropout masks in every method).
    Returns (loss, seconds)."""
    if seed is not None:
        torch.manual_seed(seed)
    sync(device)
    t0 = time.perf_counter()
    module.zero_grad(set_to_none=True)
    with autocast if autocast is not None else contextlib.nullcontext():
        loss, acc = module(batch)
    loss = loss.mean()
    loss.backward()
    for opt in optimizers:
        opt.step()
    value = loss.item()
    sync(device)
    return value, time.perf_counter() - t0


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


# ====================================================================== records, machine, inputs

def summary(values: Sequence[float]) -> dict[str, float]:
    return {"median": median(values), "min": float(min(values)), "max": float(max(values))}


class Recorder:
    """Per-method lists of run measurements."""

    def __init__(self) -> None:
        self.runs: dict[str, list[dict[str, float]]] = {}

    def add(self, method: str, record: dict[str, float]) -> None:
        self.runs.setdefault(method, []).append(record)

    def field(self, method: str, key: str) -> list[float]:
        return [r[key] for r in self.runs.get(method, []) if r.get(key) is not None]


def agreement(a: np.ndarray | None, b: np.ndarray | None) -> float | None:
    if a is None or b is None or a.shape != b.shape:
        return None
    return float((a == b).mean())


def bench_device(spec: str) -> torch.device:
    """The device of ``--gpus`` (the package's device grammar)."""
    from ..runtime.devices import resolve_device  # not at module level: see original_worker
    return resolve_device(spec)


def cpu_name() -> str:
    """This machine's CPU model (``runtime.process.cpu_name``)."""
    from ..runtime.process import cpu_name as name
    return name()


def bf16_supported(device: torch.device) -> bool:
    """bf16 is fast here: CUDA with bf16, or a CPU with AVX512-BF16 / AMX that oneDNN uses."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    from ..accel import mkldnn_bf16_available
    from ..runtime.process import cpu_flags
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"}) and mkldnn_bf16_available()


def load_avg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


class Pair:
    """An encoder/decoder pair with parity-rule weights saved to ``workdir``.

    ``spec``: ``ENCODER+DECODER``, optionally ``@LABEL`` (a ``--cfg`` pair that repeats
    another's networks with other options is labelled by its file name). Any
    registered encoder (the original's, ``timm:<name>`` ...); ``options``: its
    ``MODEL.encoder_options`` (from a ``--cfg`` file). ``fc_dim``: the original's
    width for the original's encoders (the original worker needs it), else 0 (the
    encoder declares its channels)."""

    def __init__(self, spec: str, num_class: int, workdir: str,
                 options: dict[str, Any] | None = None) -> None:
        # ENCODER+DECODER[@LABEL]: a label tells apart pairs of other options
        archs, _, label = spec.partition("@")
        if "+" not in archs:
            raise SystemExit(f"pair '{spec}' must be ENCODER+DECODER, "
                             "e.g. resnet50dilated+ppm_deepsup")
        self.enc_arch, self.dec_arch = (s.strip().lower() for s in archs.split("+", 1))
        if self.enc_arch not in FC_DIM:
            from ..models.registry import encoder_factory
            try:
                encoder_factory(self.enc_arch)
            except ValueError as exc:
                raise SystemExit(str(exc)) from None
        self.name = f"{self.enc_arch}+{self.dec_arch}" + (f"@{label}" if label else "")
        self.fc_dim = FC_DIM.get(self.enc_arch, 0)
        self.options = dict(options or {})
        self.num_class = num_class
        self.workdir = workdir
        safe = self.name.replace(":", "_").replace("/", "_")
        self.enc_weights = os.path.join(workdir, f"{safe}.encoder.pth")
        self.dec_weights = os.path.join(workdir, f"{safe}.decoder.pth")
        self._score_sides: dict[int, int] = {}

    def network(self, weights: tuple[str, str] | None = None,
                use_softmax: bool = False) -> nn.Module:
        """The pair's ``SegmentationNetwork`` (``weights``: two state-dict files, else
        random init), in training mode."""
        from ..models import network_from_archs
        return network_from_archs(self.enc_arch, self.dec_arch, num_class=self.num_class,
                                  fc_dim=self.fc_dim, weights=weights, use_softmax=use_softmax,
                                  encoder_options=self.options)

    def build(self, use_softmax: bool = True) -> nn.Module:
        """The pair's ``SegmentationNetwork`` in eval mode, filled by the parity weight
        rule (files written once); ``use_softmax``: the decoder's own forward returns
        probabilities, as the original's inference modules do."""
        if not os.path.exists(self.dec_weights):
            net = self.network()
            for part, path in ((net.encoder, self.enc_weights), (net.decoder, self.dec_weights)):
                torch.save({k: rule_tensor(k, v.shape) for k, v in part.state_dict().items()},
                           path)
        net = self.network((self.enc_weights, self.dec_weights), use_softmax=use_softmax)
        return net.eval()

    def label_stride(self) -> int:
        """Input pixels per score pixel (8 for the dilated encoders with C1/PPM, 4 for
        UPerNet, 2 for DINOv2's upsampled linear head ...): how much training labels
        are downsampled for this pair (probed at 224, a multiple of 32 and of 14)."""
        return max(1, 224 // self.score_side(224))

    def score_side(self, side: int) -> int:
        """The side of the scores the network gives for a ``side`` x ``side`` input
        (training labels come at that size)."""
        if side not in self._score_sides:
            net = self.network().eval()
            with torch.no_grad():
                out = net(torch.zeros(1, 3, side, side))
            self._score_sides[side] = int(out.shape[-1])
        return self._score_sides[side]


def scene(height: int, width: int, seed: int = 0):
    """A synthetic RGB photo (PIL) of the given size."""
    from PIL import Image

    from ..data.synthetic import make_scene
    image, _ = make_scene(np.random.default_rng(seed), height, width)
    return Image.fromarray(image)


def write_rule_checkpoint(cfg: Any, folder: str) -> None:
    """``folder/{encoder,decoder}_<TEST.checkpoint>`` for the model of ``cfg``, filled
    by the parity weight rule (deterministic, no training or download)."""
    from ..models import build_model
    os.makedirs(folder, exist_ok=True)
    network = build_model(cfg)
    nets = {"encoder": network.encoder, "decoder": network.decoder}
    for role, net in nets.items():
        state = {k: rule_tensor(k, v.shape) for k, v in net.state_dict().items()}
        torch.save(state, os.path.join(folder, f"{role}_{cfg.TEST.checkpoint}"))


def resize_rules(scales: Sequence[int], max_size: int, padding: int):
    """The preprocessing rule (``data.transforms.Preprocess``) with these sizes."""
    from ..data.transforms import Preprocess
    return Preprocess(tuple(scales), max_size, padding)


REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class Bench:
    """One run's state, shared by the sections: the resolved options
    (``options.resolve_options``), device, a scratch folder, the original's
    worker (``original_worker.OriginalWorker`` or None), the results being
    collected and the matmul peaks (GFLOP/s by precision)."""

    def __init__(self, options: BenchmarkOptions) -> None:
        self.options = options
        self.device = bench_device(options.device)
        self.workdir = tempfile.mkdtemp(prefix="semseg_bench_")
        self.worker: Any = None
        self.results: dict[str, Any] = {}
        self.peaks: dict[str, float] = {}

    def log(self, msg: str) -> None:
        if not self.options.quiet:
            print(msg, file=sys.stderr, flush=True)
