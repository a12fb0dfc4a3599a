"""Speed and memory, measured: ``python -m mit_semseg.benchmark``.

Reports, for encoder/decoder pairs and image sizes:

* single-scale and multi-scale inference images/s (model and fusion time
  apart), model GFLOPs (convolution and linear multiply-adds counted with
  forward hooks, x2), achieved GFLOP/s and its share of this machine's matmul
  peak (a large ``torch.mm`` timed in the same run, fp32 and bf16), peak
  memory (RSS on CPU, ``max_memory_allocated`` on CUDA), and label agreement
  between methods;
* training iterations/s and images/s, with the loss of every iteration
  compared between methods;
* data-loader batches/s and the data-wait vs compute split of a training step;
* the confusion-matrix metrics against ``utils.intersectionAndUnion``.

Inference methods: ``plain`` (this package's models, the original toolkit's
procedure: per scale ``softmax(interpolate(logits))`` at full size, summed
divided by the number of scales, argmax), ``engine`` (``InferenceEngine``),
``fast`` / ``fast-bf16`` / ``fast-fp16`` (``fast.FastInferenceEngine``) and, with
``--compare-original PYTHON``, ``original``: the original implementation run
by that interpreter in a worker process on the same inputs and weights, with
the same procedure (transcribed here; the original's eval code needs
torchvision). Methods are timed alternately, run by run, so that load from
other processes affects them alike; medians and [min-max] are reported.

Weights follow the parity rule of tests/parity (deterministic, no download).
This file is also the worker: ``PYTHON -P mit_semseg/benchmark.py --worker``
imports only the standard library, numpy and torch at module level, so the
original's interpreter can run it without this package on its path.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn as nn

FC_DIM = {"mobilenetv2dilated": 320, "resnet18": 512, "resnet18dilated": 512,
          "resnet50": 2048, "resnet50dilated": 2048, "resnet101": 2048,
          "resnet101dilated": 2048, "resnext101": 2048, "hrnetv2": 720}

DEFAULT_PAIRS = ("mobilenetv2dilated+c1_deepsup", "resnet50dilated+ppm_deepsup")
DEFAULT_TRAIN_PAIRS = ("mobilenetv2dilated+c1_deepsup", "resnet18dilated+ppm_deepsup")
TARGET_SINGLE_PAIRS = ("mobilenetv2dilated+c1_deepsup", "resnet50dilated+ppm_deepsup",
                       "resnet50+upernet", "hrnetv2+c1")
DEFAULT_SCALES = (300, 375, 450, 525, 600)
SECTIONS = ("peak", "single", "multi", "train", "data", "metrics")


# ============================================================================ harness
# Shared by this process and the original's worker: timing, memory, weights and
# the original toolkit's procedures.

def _sync(device: torch.device | str) -> None:
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
        _sync(self.device)
        self.t = time.perf_counter()


def original_inference(encoder: nn.Module, decoder: nn.Module, imgs: Sequence[torch.Tensor],
                       size: tuple[int, int], num_class: int, device: torch.device,
                       gap: bool = False) -> tuple[torch.Tensor, dict[str, Any]]:
    """The original toolkit's eval procedure (eval.py / test.py), transcribed:
    per resized copy ``decoder(encoder(img), segSize)`` (interpolate + softmax
    inside the decoder built with use_softmax=True), ``scores = scores + p / n``,
    labels = argmax. Returns (labels [H, W] int64 on CPU, seconds {total, model, post});
    ``model`` runs until the class layer (``decoder.conv_last``) has produced its scores.
    ``gap``: also return, untimed, the margin of the best class over the second
    (``times["gap"]``, [H, W] float32 on CPU) to tell float ties from real differences.
    """
    stamp = _Stamp(device)
    handle = decoder.conv_last.register_forward_hook(stamp)
    model_s = 0.0
    try:
        _sync(device)
        t0 = time.perf_counter()
        with torch.no_grad():
            scores = torch.zeros(1, num_class, size[0], size[1], device=device)
            for img in imgs:
                _sync(device)
                ts = time.perf_counter()
                pred = decoder(encoder(img.to(device), return_feature_maps=True), segSize=size)
                assert stamp.t is not None
                model_s += stamp.t - ts
                scores = scores + pred / len(imgs)
            _, pred = torch.max(scores, dim=1)
            labels = pred[0].cpu()
        _sync(device)
        total = time.perf_counter() - t0
    finally:
        handle.remove()
    out: dict[str, Any] = {"total": total, "model": model_s, "post": total - model_s}
    if gap:
        top2 = torch.topk(scores[0], 2, dim=0).values
        out["gap"] = (top2[0] - top2[1]).cpu()
    return labels, out


def group_weight(module: nn.Module) -> list[dict[str, Any]]:
    """The original's SGD groups: conv/linear weights decayed; their biases and
    BatchNorm parameters not."""
    decay, no_decay = [], []
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd)):
            decay.append(m.weight)
            if m.bias is not None:
                no_decay.append(m.bias)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            if m.weight is not None:
                no_decay.append(m.weight)
            if m.bias is not None:
                no_decay.append(m.bias)
    return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]


def original_train_step(module: nn.Module, optimizers: Sequence[torch.optim.Optimizer],
                        batch: dict[str, torch.Tensor], device: torch.device,
                        autocast: Any = None, seed: int | None = None) -> tuple[float, float]:
    """One iteration of the original's train loop, transcribed: zero_grad,
    forward (loss, acc), mean, backward, step every optimizer, ``loss.item()``.
    ``seed``: reseed torch first (same dropout masks in every method).
    Returns (loss, seconds)."""
    if seed is not None:
        torch.manual_seed(seed)
    _sync(device)
    t0 = time.perf_counter()
    module.zero_grad(set_to_none=True)
    with autocast if autocast is not None else contextlib.nullcontext():
        loss, acc = module(batch)
    loss = loss.mean()
    loss.backward()
    for opt in optimizers:
        opt.step()
    value = loss.item()
    _sync(device)
    return value, time.perf_counter() - t0


def _median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


# ============================================================================ worker
# Runs under the original implementation's interpreter (python -P benchmark.py --worker).

def _worker_main() -> None:  # pragma: no cover - exercised through --compare-original
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything else printed goes to stderr
    sys.stdout = sys.stderr
    state: dict[str, Any] = {}
    for line in sys.stdin:
        if not line.strip():
            continue
        cmd = json.loads(line)
        try:
            reply = _worker_command(cmd, state)
        except Exception as exc:  # report, keep serving
            import traceback
            reply = {"error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()}
        proto.write(json.dumps(reply) + "\n")
        proto.flush()
        if cmd.get("cmd") == "quit":
            break


def _worker_command(cmd: dict, state: dict) -> dict:  # pragma: no cover
    op = cmd["cmd"]
    device = torch.device(cmd.get("device", "cpu"))
    if op == "hello":
        import mit_semseg
        if cmd.get("threads"):
            torch.set_num_threads(int(cmd["threads"]))
        return {"mit_semseg_file": os.path.abspath(mit_semseg.__file__),
                "version": getattr(mit_semseg, "__version__", None),
                "torch": torch.__version__, "threads": torch.get_num_threads(),
                "python": sys.version.split()[0]}
    if op == "quit":
        return {"ok": True}
    if op == "free":
        state.pop(cmd["key"], None)
        return {"ok": True}
    from mit_semseg.models import ModelBuilder, SegmentationModule
    if op == "load_infer":
        enc = ModelBuilder.build_encoder(arch=cmd["enc"], fc_dim=cmd["fc_dim"],
                                         weights=cmd["enc_weights"])
        dec = ModelBuilder.build_decoder(arch=cmd["dec"], fc_dim=cmd["fc_dim"],
                                         num_class=cmd["num_class"], weights=cmd["dec_weights"],
                                         use_softmax=True)
        state[cmd["key"]] = (enc.to(device).eval(), dec.to(device).eval(),
                             torch.load(cmd["inputs"], weights_only=True))
        return {"ok": True}
    if op == "infer":
        enc, dec, imgs = state[cmd["key"]]
        keep = bool(cmd.get("labels_out"))
        with MemoryProbe(device) as mem:
            labels, times = original_inference(enc, dec, imgs, tuple(cmd["size"]),
                                                cmd["num_class"], device, gap=keep)
        if keep:
            torch.save({"labels": labels, "gap": times.pop("gap")}, cmd["labels_out"])
        return {**times, "peak_mb": mem.peak_mb, "delta_mb": mem.delta_mb}
    if op == "load_train":
        enc = ModelBuilder.build_encoder(arch=cmd["enc"], fc_dim=cmd["fc_dim"],
                                         weights=cmd["enc_weights"])
        dec = ModelBuilder.build_decoder(arch=cmd["dec"], fc_dim=cmd["fc_dim"],
                                         num_class=cmd["num_class"], weights=cmd["dec_weights"],
                                         use_softmax=False)
        module = SegmentationModule(enc, dec, nn.NLLLoss(ignore_index=-1),
                                    cmd.get("deep_sup_scale")).to(device).train()
        opts = [torch.optim.SGD(group_weight(net), lr=cmd["lr"], momentum=cmd["momentum"],
                                weight_decay=cmd["weight_decay"]) for net in (enc, dec)]
        batches = [{k: v.to(device) for k, v in b.items()}
                   for b in torch.load(cmd["batches"], weights_only=True)]
        state[cmd["key"]] = (module, opts, batches)
        return {"ok": True}
    if op == "train_step":
        module, opts, batches = state[cmd["key"]]
        with MemoryProbe(device) as mem:
            loss, seconds = original_train_step(module, opts, batches[cmd["index"] % len(batches)],
                                                device, seed=cmd.get("seed"))
        return {"loss": loss, "time": seconds, "peak_mb": mem.peak_mb, "delta_mb": mem.delta_mb}
    raise ValueError(f"unknown command {op!r}")


class OriginalWorker:
    """The original implementation in a worker process (JSON lines over pipes)."""

    def __init__(self, python: str, threads: int, device: torch.device, repo_root: str) -> None:
        self.device = device
        self.log = tempfile.NamedTemporaryFile("w+", prefix="orig_worker_", suffix=".log",
                                               delete=False)
        self.proc = subprocess.Popen([python, "-P", os.path.abspath(__file__), "--worker"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.log, text=True, cwd=tempfile.gettempdir())
        self.info = self.call(cmd="hello", threads=threads)
        where = os.path.realpath(self.info["mit_semseg_file"])
        if where.startswith(os.path.realpath(repo_root) + os.sep):
            self.close()
            raise RuntimeError(f"{python} imports this repository's mit_semseg ({where}), not the "
                               f"original; unset PYTHONPATH or use the original's interpreter")

    def call(self, **cmd: Any) -> dict:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        cmd.setdefault("device", str(self.device))
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            self.log.flush()
            self.log.seek(0)
            raise RuntimeError("original worker died:\n" + self.log.read()[-3000:])
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"original worker: {reply['error']}\n{reply.get('trace', '')}")
        return reply

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.call(cmd="quit")
            except (RuntimeError, OSError, ValueError):
                pass
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()
        with contextlib.suppress(OSError):
            os.unlink(self.log.name)


# ============================================================================ measurements

def matmul_peak(device: torch.device, dtype: torch.dtype, n: int, runs: int) -> float:
    """Best GFLOP/s of an n x n x n torch.mm in ``dtype``."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    out = torch.empty(n, n, device=device, dtype=dtype)
    torch.mm(a, b, out=out)
    best = float("inf")
    for _ in range(max(1, runs)):
        _sync(device)
        t = time.perf_counter()
        torch.mm(a, b, out=out)
        _sync(device)
        best = min(best, time.perf_counter() - t)
    return 2.0 * n ** 3 / best / 1e9


def _pyramid_conv_macs(conv: nn.Module, top: torch.Tensor,
                       branches: Sequence[torch.Tensor]) -> int:
    """Multiply-adds of ``models.decoders.pyramid_conv`` (stride-1 convolution)."""
    n, c, h, w = top.shape
    o = conv.weight.shape[0]
    kh, kw = conv.weight.shape[2:]
    macs = n * o * h * w * c * kh * kw  # the top map's part: a smaller convolution
    for b in branches:
        bc, bh, bw = b.shape[1:]
        macs += n * o * kh * kw * bc * bh * bw  # the kernel on the small map
        macs += n * o * h * kh * bh * kw * bw  # resize along the rows
        macs += n * o * h * w * kw * bw  # resize along the columns
    return macs


def count_gflops(encoder: nn.Module, decoder: nn.Module,
                 imgs: Sequence[torch.Tensor], factorized: bool = False) -> float:
    """GFLOPs (2 x multiply-adds of Conv2d and Linear layers) of the forward
    passes to class scores for every image in ``imgs``; ``factorized``: with
    the decoder's ``factorized_pyramid`` on (``models.decoders.pyramid_conv``)."""
    from .models.inference_copy import factorize_pyramids_
    from .models import decoders
    macs = [0]

    def conv_hook(m: nn.Module, inputs: Any, out: torch.Tensor) -> None:
        macs[0] += out.numel() * (m.in_channels // m.groups) * math.prod(m.kernel_size)

    def linear_hook(m: nn.Module, inputs: Any, out: torch.Tensor) -> None:
        macs[0] += out.numel() * m.in_features

    real_pyramid_conv = decoders.pyramid_conv

    def counted_pyramid_conv(conv, top, branches):
        macs[0] += _pyramid_conv_macs(conv, top, branches)
        return real_pyramid_conv(conv, top, branches)

    decoder = factorize_pyramids_(copy.deepcopy(decoder), factorized)
    handles = []
    for net in (encoder, decoder):
        for m in net.modules():
            if isinstance(m, nn.Conv2d):
                handles.append(m.register_forward_hook(conv_hook))
            elif isinstance(m, nn.Linear):
                handles.append(m.register_forward_hook(linear_hook))
    decoders.pyramid_conv = counted_pyramid_conv
    try:
        with torch.inference_mode():
            for img in imgs:
                decoder.logits(encoder(img, return_feature_maps=True))
    finally:
        decoders.pyramid_conv = real_pyramid_conv
        for h in handles:
            h.remove()
    return 2.0 * macs[0] / 1e9


def _summary(values: Sequence[float]) -> dict[str, float]:
    return {"median": _median(values), "min": float(min(values)), "max": float(max(values))}


class _Recorder:
    """Per-method lists of run measurements."""

    def __init__(self) -> None:
        self.runs: dict[str, list[dict[str, float]]] = {}
        self.labels: dict[str, np.ndarray] = {}

    def add(self, method: str, record: dict[str, float]) -> None:
        self.runs.setdefault(method, []).append(record)

    def field(self, method: str, key: str) -> list[float]:
        return [r[key] for r in self.runs.get(method, []) if r.get(key) is not None]


def _agreement(a: np.ndarray | None, b: np.ndarray | None) -> float | None:
    if a is None or b is None or a.shape != b.shape:
        return None
    return float((a == b).mean())


# ============================================================================ our side

def _device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(spec)


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def bf16_supported(device: torch.device) -> bool:
    """bf16 is fast here: CUDA with bf16, or a CPU with AVX512-BF16 / AMX."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return bool(_cpu_flags() & {"avx512_bf16", "amx_bf16"})


def _load_avg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


class Pair:
    """An encoder/decoder pair with parity-rule weights saved to ``workdir``."""

    def __init__(self, spec: str, num_class: int, workdir: str) -> None:
        if "+" not in spec:
            raise SystemExit(f"pair '{spec}' must be ENCODER+DECODER, e.g. resnet50dilated+ppm_deepsup")
        self.enc_arch, self.dec_arch = (s.strip().lower() for s in spec.split("+", 1))
        if self.enc_arch not in FC_DIM:
            raise SystemExit(f"unknown encoder '{self.enc_arch}'; expected one of {sorted(FC_DIM)}")
        self.name = f"{self.enc_arch}+{self.dec_arch}"
        self.fc_dim = FC_DIM[self.enc_arch]
        self.num_class = num_class
        self.workdir = workdir
        self.enc_weights = os.path.join(workdir, f"{self.name}.encoder.pth")
        self.dec_weights = os.path.join(workdir, f"{self.name}.decoder.pth")
        self._plain: tuple[nn.Module, nn.Module] | None = None

    def build(self, use_softmax: bool = True) -> tuple[nn.Module, nn.Module]:
        from .models import ModelBuilder
        if not os.path.exists(self.dec_weights):
            enc = ModelBuilder.build_encoder(self.enc_arch, self.fc_dim, pretrained=False)
            dec = ModelBuilder.build_decoder(self.dec_arch, self.fc_dim, self.num_class)
            for net, path in ((enc, self.enc_weights), (dec, self.dec_weights)):
                torch.save({k: rule_tensor(k, v.shape) for k, v in net.state_dict().items()}, path)
        enc = ModelBuilder.build_encoder(self.enc_arch, self.fc_dim, weights=self.enc_weights,
                                         pretrained=False)
        dec = ModelBuilder.build_decoder(self.dec_arch, self.fc_dim, self.num_class,
                                         weights=self.dec_weights, use_softmax=use_softmax)
        return enc.eval(), dec.eval()


def _scene(height: int, width: int, seed: int = 0):
    """A synthetic RGB photo (PIL) of the given size."""
    from PIL import Image

    from .synthetic import make_scene
    image, _ = make_scene(np.random.default_rng(seed), height, width)
    return Image.fromarray(image)


def _prepare(scales: Sequence[int], max_size: int, padding: int):
    """A TestDataset used only for its resize/normalise rules."""
    from types import SimpleNamespace

    from .dataset import TestDataset
    opt = SimpleNamespace(imgSizes=tuple(scales), imgMaxSize=max_size, padding_constant=padding)
    return TestDataset([{"fpath_img": "<in-memory>"}], opt)


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.device = _device(args.device)
        self.workdir = tempfile.mkdtemp(prefix="semseg_bench_")
        self.repo_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        self.worker: OriginalWorker | None = None
        self.results: dict[str, Any] = {}
        self.peaks: dict[str, float] = {}

    def log(self, msg: str) -> None:
        if not self.args.quiet:
            print(msg, file=sys.stderr, flush=True)

    # ------------------------------------------------------------------ setup
    def start(self) -> None:
        a = self.args
        self._threads_before = torch.get_num_threads()
        if a.threads:
            torch.set_num_threads(a.threads)
        self.results["machine"] = {
            "device": str(self.device),
            "device_name": (torch.cuda.get_device_name(self.device) if self.device.type == "cuda"
                            else _cpu_name()),
            "cpu_count": os.cpu_count(), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),
            "load_avg_start": _load_avg(),
        }
        if a.compare_original:
            self.log(f"starting the original implementation: {a.compare_original}")
            self.worker = OriginalWorker(a.compare_original, torch.get_num_threads(), self.device,
                                         self.repo_root)
            self.results["original"] = self.worker.info

    def close(self) -> None:
        if self.worker is not None:
            self.worker.close()
        self.results["machine"]["load_avg_end"] = _load_avg()
        torch.set_num_threads(self._threads_before)
        import shutil
        shutil.rmtree(self.workdir, ignore_errors=True)

    # ------------------------------------------------------------------ peak
    def run_peak(self) -> None:
        a = self.args
        n = a.mm_size
        out = {"n": n, "fp32": matmul_peak(self.device, torch.float32, n, a.runs + 1)}
        if self.device.type == "cuda":
            out["fp16"] = matmul_peak(self.device, torch.float16, n, a.runs + 1)
        if "bf16" in a.precisions:
            out["bf16"] = matmul_peak(self.device, torch.bfloat16, n, a.runs + 1)
        if "fp16" in a.precisions and "fp16" not in out:
            out["fp16"] = matmul_peak(self.device, torch.float16, n, a.runs + 1)
        self.peaks = out
        self.results["matmul_peak_gflops"] = out
        self.log(f"matmul peak: " + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in out.items()
                                              if k != "n"))

    # ------------------------------------------------------------------ inference
    def _methods(self) -> list[str]:
        methods = [m for m in self.args.methods if not m.startswith("fast-")]
        if "fast" in methods:
            methods += [f"fast-{p}" for p in self.args.precisions if p != "fp32"]
        if self.worker is not None:
            methods = ["original"] + methods
        return methods

    def _infer_case(self, kind: str, pair: Pair, imgs: list[torch.Tensor],
                    size: tuple[int, int]) -> dict[str, Any]:
        from .inference import InferenceEngine
        a = self.args
        dev = self.device
        enc, dec = pair.build(use_softmax=True)
        enc, dec = enc.to(dev), dec.to(dev)
        imgs = [t.to(dev) for t in imgs]
        gflops = count_gflops(enc, dec, imgs)
        gflops_fast = count_gflops(enc, dec, imgs, factorized=True)
        methods = self._methods()
        engines: dict[str, Any] = {}
        if "engine" in methods:
            engines["engine"] = InferenceEngine(enc, dec, device=dev, exact=True)
        if "fast" in methods:
            engines["fast"] = InferenceEngine(enc, dec, device=dev)
        for m in methods:
            if m.startswith("fast-"):
                engines[m] = InferenceEngine(enc, dec, device=dev, precision=m[5:])
        key = f"{kind}:{pair.name}"
        labels_path = os.path.join(self.workdir, "orig_labels.pt")
        if self.worker is not None:
            inputs = os.path.join(self.workdir, f"{kind}_inputs.pt")
            torch.save([t.cpu() for t in imgs], inputs)
            self.worker.call(cmd="load_infer", key=key, enc=pair.enc_arch, dec=pair.dec_arch,
                             fc_dim=pair.fc_dim, num_class=pair.num_class,
                             enc_weights=pair.enc_weights, dec_weights=pair.dec_weights,
                             inputs=inputs)

        def run(method: str, keep_labels: bool) -> dict[str, float]:
            if method == "original":
                assert self.worker is not None
                rec = self.worker.call(cmd="infer", key=key, size=list(size),
                                       num_class=pair.num_class,
                                       labels_out=labels_path if keep_labels else None)
                if keep_labels:
                    saved = torch.load(labels_path, weights_only=True)
                    rec_store[method] = saved["labels"].numpy()
                    gaps[method] = saved["gap"].numpy()
                return rec
            with MemoryProbe(dev) as mem:
                if method == "plain":
                    labels, rec = original_inference(enc, dec, imgs, size, pair.num_class, dev,
                                                     gap=keep_labels)
                    lab = labels.numpy()
                    if "gap" in rec:
                        gaps[method] = rec.pop("gap").numpy()
                else:
                    eng = engines[method]
                    _sync(dev)
                    t0 = time.perf_counter()
                    logits = eng.scale_logits(imgs)
                    _sync(dev)
                    t1 = time.perf_counter()
                    lab = eng.fuse(logits, size).labels
                    _sync(dev)
                    t2 = time.perf_counter()
                    rec = {"total": t2 - t0, "model": t1 - t0, "post": t2 - t1}
            if keep_labels:
                rec_store[method] = lab
            return {**rec, "peak_mb": mem.peak_mb, "delta_mb": mem.delta_mb}

        rec_store: dict[str, np.ndarray] = {}
        gaps: dict[str, np.ndarray] = {}
        recorder = _Recorder()
        for _ in range(a.warmup):
            for m in methods:
                run(m, keep_labels=False)
        for r in range(a.runs):
            for m in methods:
                recorder.add(m, run(m, keep_labels=(r == a.runs - 1)))
        if self.worker is not None:
            self.worker.call(cmd="free", key=key)

        ref_name = "original" if "original" in methods else "plain" if "plain" in methods else None
        out: dict[str, Any] = {"pair": pair.name, "size": list(size),
                               "input_sizes": [list(t.shape[2:]) for t in imgs],
                               "gflops": gflops, "methods": {}}
        for m in methods:
            total = recorder.field(m, "total")
            model = recorder.field(m, "model")
            entry = {
                "img_per_s": _summary([1.0 / t for t in total]),
                "total_ms": _summary([1e3 * t for t in total]),
                "model_ms": _summary([1e3 * t for t in model]),
                "post_ms": _summary([1e3 * t for t in recorder.field(m, "post")]),
                "peak_rss_mb" if dev.type == "cpu" else "peak_alloc_mb":
                    max(recorder.field(m, "peak_mb"), default=None),
                "transient_mb": max(recorder.field(m, "delta_mb"), default=None),
            }
            model_s = _median(model)
            entry["gflops"] = gflops_fast if m.startswith("fast") else gflops
            entry["achieved_gflops"] = entry["gflops"] / model_s if model_s > 0 else None
            peak = self.peaks.get(m[5:] if m.startswith("fast-") else "fp32")
            entry["share_of_peak"] = (entry["achieved_gflops"] / peak
                                      if peak and entry["achieved_gflops"] else None)
            if ref_name is not None and m != ref_name:
                entry["speedup"] = (_median([1.0 / t for t in total])
                                    / _median([1.0 / t for t in recorder.field(ref_name, "total")]))
                entry["agreement_vs_" + ref_name] = _agreement(rec_store.get(m),
                                                               rec_store.get(ref_name))
                mine, ref_lab = rec_store.get(m), rec_store.get(ref_name)
                if mine is not None and ref_lab is not None and ref_name in gaps:
                    differ = mine != ref_lab
                    entry["differing_pixels"] = int(differ.sum())
                    entry["max_ref_gap_at_differing"] = (float(gaps[ref_name][differ].max())
                                                         if differ.any() else None)
            if m.startswith("fast-"):
                entry["agreement_vs_fast_fp32"] = _agreement(rec_store.get(m), rec_store.get("fast"))
            out["methods"][m] = entry
        out["reference"] = ref_name
        return out

    def run_single(self) -> None:
        a = self.args
        rows = []
        prep = _prepare((a.size,), a.size, 1)
        for spec in a.single_pairs:
            pair = Pair(spec, a.num_class, self.workdir)
            img = prep.img_transform(_scene(a.size, a.size, seed=1)).unsqueeze(0).contiguous()
            self.log(f"single-scale {pair.name} {a.size}x{a.size}")
            rows.append(self._infer_case("single", pair, [img], (a.size, a.size)))
        self.results["single_scale"] = rows

    def run_multi(self) -> None:
        a = self.args
        rows = []
        h, w = a.photo
        prep = _prepare(a.scales, a.max_size, a.padding)
        photo = _scene(h, w, seed=2)
        imgs = prep._multi_scale(photo)
        for spec in a.multi_pairs:
            pair = Pair(spec, a.num_class, self.workdir)
            self.log(f"multi-scale {pair.name} {w}x{h} photo, scales {list(a.scales)}")
            row = self._infer_case("multi", pair, imgs, (h, w))
            row["scales"] = list(a.scales)
            rows.append(row)
        self.results["multi_scale"] = rows

    # ------------------------------------------------------------------ training
    def _train_batches(self, pair: Pair, count: int) -> list[dict[str, torch.Tensor]]:
        a = self.args
        g = torch.Generator().manual_seed(11)
        s = a.train_size
        rate = 8
        return [{"img_data": torch.randn(a.train_batch, 3, s, s, generator=g),
                 "seg_label": torch.randint(-1, pair.num_class, (a.train_batch, s // rate, s // rate),
                                            generator=g)}
                for _ in range(count)]

    def run_train(self) -> None:
        from .models.inference_copy import factorize_pyramids_
        from .optim import channels_last_, make_sgd
        from .models import ModelBuilder, SegmentationModule
        a = self.args
        dev = self.device
        rows = []
        lr, momentum, wd = 0.02, 0.9, 1e-4
        for spec in a.train_pairs:
            pair = Pair(spec, a.num_class, self.workdir)
            self.log(f"training {pair.name}, batch {a.train_batch}, {a.train_size}x{a.train_size}")
            deep_sup = 0.4 if pair.dec_arch.endswith("deepsup") else None
            torch.manual_seed(0)
            enc0 = ModelBuilder.build_encoder(pair.enc_arch, pair.fc_dim, pretrained=False)
            dec0 = ModelBuilder.build_decoder(pair.dec_arch, pair.fc_dim, pair.num_class)
            init_enc = os.path.join(self.workdir, f"train_{pair.name}.enc.pth")
            init_dec = os.path.join(self.workdir, f"train_{pair.name}.dec.pth")
            torch.save(enc0.state_dict(), init_enc)
            torch.save(dec0.state_dict(), init_dec)
            batches = self._train_batches(pair, 4)
            batches_path = os.path.join(self.workdir, "train_batches.pt")
            torch.save(batches, batches_path)
            methods = [m for m in ("plain", "fast") if m in a.methods or m == "plain"]
            if "bf16" in a.precisions and "fast" in methods:
                methods.append("fast-bf16")
            state: dict[str, Any] = {}
            for m in methods:
                enc = ModelBuilder.build_encoder(pair.enc_arch, pair.fc_dim, weights=init_enc,
                                                 pretrained=False)
                dec = ModelBuilder.build_decoder(pair.dec_arch, pair.fc_dim, pair.num_class,
                                                 weights=init_dec)
                module = SegmentationModule(enc, dec, nn.NLLLoss(ignore_index=-1),
                                            deep_sup).to(dev).train()
                feeds = [{k: v.to(dev) for k, v in b.items()} for b in batches]
                if m == "plain":
                    opts = [torch.optim.SGD(group_weight(net), lr=lr, momentum=momentum,
                                            weight_decay=wd) for net in (enc, dec)]
                    ctx = None
                else:
                    for feed in feeds:
                        channels_last_(None, feed)
                    channels_last_(module)
                    factorize_pyramids_(module)
                    opts = [make_sgd(group_weight(net), lr=lr, momentum=momentum,
                                     weight_decay=wd) for net in (enc, dec)]
                    ctx = (torch.autocast(dev.type, dtype=torch.bfloat16)
                           if m == "fast-bf16" else None)
                state[m] = (module, opts, feeds, ctx)
            if self.worker is not None:
                key = f"train:{pair.name}"
                self.worker.call(cmd="load_train", key=key, enc=pair.enc_arch, dec=pair.dec_arch,
                                 fc_dim=pair.fc_dim, num_class=pair.num_class,
                                 enc_weights=init_enc, dec_weights=init_dec,
                                 deep_sup_scale=deep_sup, lr=lr, momentum=momentum,
                                 weight_decay=wd, batches=batches_path)
                methods = ["original"] + methods
            losses: dict[str, list[float]] = {m: [] for m in methods}
            recorder = _Recorder()
            iters = a.warmup + a.train_iters
            for i in range(iters):
                for m in methods:
                    if m == "original":
                        assert self.worker is not None
                        rec = self.worker.call(cmd="train_step", key=key, index=i,
                                               seed=1000 + i)
                        loss, seconds = rec["loss"], rec["time"]
                        peak, delta = rec["peak_mb"], rec["delta_mb"]
                    else:
                        module, opts, feeds, ctx = state[m]
                        with MemoryProbe(dev) as mem:
                            loss, seconds = original_train_step(
                                module, opts, feeds[i % len(feeds)], dev, ctx, seed=1000 + i)
                        peak, delta = mem.peak_mb, mem.delta_mb
                    losses[m].append(loss)
                    if i >= a.warmup:
                        recorder.add(m, {"time": seconds, "peak_mb": peak, "delta_mb": delta})
            if self.worker is not None:
                self.worker.call(cmd="free", key=key)
            ref = "original" if "original" in methods else "plain"
            out: dict[str, Any] = {"pair": pair.name, "batch": a.train_batch,
                                   "size": a.train_size, "reference": ref, "methods": {}}
            for m in methods:
                t = recorder.field(m, "time")
                entry = {
                    "it_per_s": _summary([1.0 / x for x in t]),
                    "img_per_s": _summary([a.train_batch / x for x in t]),
                    "ms_per_it": _summary([1e3 * x for x in t]),
                    "peak_rss_mb" if dev.type == "cpu" else "peak_alloc_mb":
                        max(recorder.field(m, "peak_mb"), default=None),
                    "losses": losses[m],
                }
                if m != ref:
                    entry["speedup"] = _median([1.0 / x for x in t]) / _median(
                        [1.0 / x for x in recorder.field(ref, "time")])
                    diffs = [abs(x - y) / max(abs(y), 1e-12) for x, y in zip(losses[m], losses[ref])]
                    entry["first_rel_loss_diff_vs_" + ref] = diffs[0] if diffs else None
                    entry["max_rel_loss_diff_vs_" + ref] = max(diffs) if diffs else None
                out["methods"][m] = entry
            rows.append(out)
            del state
        self.results["training"] = rows

    # ------------------------------------------------------------------ data
    def run_data(self) -> None:
        from types import SimpleNamespace

        from .dataset import TrainDataset, worker_init_fn
        from .lib.nn import user_scattered_collate
        from .synthetic import MAX_CLASSES, make_synthetic_dataset
        a = self.args
        root = os.path.join(self.workdir, "synthetic")
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
            loader = torch.utils.data.DataLoader(ds, batch_size=1, shuffle=False,
                                                 collate_fn=user_scattered_collate,
                                                 num_workers=workers,
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
                entry["ms_per_batch"] = _summary([1e3 * t for t in times])
            out["loaders"][str(workers)] = entry
            self.log(f"data loader, {workers} workers: {rate:.1f} batches/s")
        # data wait vs compute of the fast training step, fed by the in-process loader
        if a.train_pairs:
            from .optim import channels_last_, make_sgd
            from .models import ModelBuilder, SegmentationModule
            pair = Pair(a.train_pairs[0], MAX_CLASSES, self.workdir)
            enc = ModelBuilder.build_encoder(pair.enc_arch, pair.fc_dim, pretrained=False)
            dec = ModelBuilder.build_decoder(pair.dec_arch, pair.fc_dim, MAX_CLASSES)
            module = SegmentationModule(enc, dec, nn.NLLLoss(ignore_index=-1),
                                        0.4 if pair.dec_arch.endswith("deepsup") else None)
            module.to(self.device).train()
            channels_last_(module)
            opts = [make_sgd(group_weight(n), lr=0.02, momentum=0.9, weight_decay=1e-4)
                    for n in (enc, dec)]
            ds = TrainDataset(root, odgt, opt, batch_per_gpu=a.train_batch, seed=0)
            data_t, comp_t = [], []
            for i in range(a.warmup + a.data_batches):
                t0 = time.perf_counter()
                batch = ds[0]
                feed = {k: v.to(self.device) for k, v in batch.items()}
                channels_last_(None, feed)
                t1 = time.perf_counter()
                _, seconds = original_train_step(module, opts, feed, self.device)
                if i >= a.warmup:
                    data_t.append(t1 - t0)
                    comp_t.append(seconds)
            out["train_step_split"] = {
                "pair": pair.name, "data_ms": _summary([1e3 * t for t in data_t]),
                "compute_ms": _summary([1e3 * t for t in comp_t]),
                "data_share": _median(data_t) / (_median(data_t) + _median(comp_t)),
            }
        self.results["data"] = out

    # ------------------------------------------------------------------ metrics
    def run_metrics(self) -> None:
        from .utils import intersectionAndUnion
        a = self.args
        n, k = a.metrics_size, a.num_class
        rng = np.random.default_rng(0)
        label = rng.integers(-1, k, (n, n)).astype(np.int64)
        pred = np.where(rng.random((n, n)) < 0.7, np.maximum(label, 0),
                        rng.integers(0, k, (n, n))).astype(np.int64)
        out: dict[str, Any] = {"size": n, "num_class": k}

        def timed(fn: Callable[[], Any]) -> tuple[list[float], Any]:
            result = fn()
            times = []
            for _ in range(max(1, a.runs)):
                t = time.perf_counter()
                result = fn()
                times.append(time.perf_counter() - t)
            return times, result

        t_iu, (inter, union) = timed(lambda: intersectionAndUnion(pred, label, k))
        out["intersectionAndUnion_ms"] = _summary([1e3 * t for t in t_iu])
        try:
            from .metrics import SegmentationMetrics
        except ImportError:
            out["confusion"] = None
            self.results["metrics"] = out
            return

        def confusion(p: Any, l: Any) -> Any:
            m = SegmentationMetrics(k)
            m.update(p, l)
            return m

        t_np, m_np = timed(lambda: confusion(pred, label))
        t_pt, _ = timed(lambda: confusion(torch.from_numpy(pred), torch.from_numpy(label)))
        out["confusion_numpy_ms"] = _summary([1e3 * t for t in t_np])
        out["confusion_torch_ms"] = _summary([1e3 * t for t in t_pt])
        out["speedup_numpy"] = _median(t_iu) / _median(t_np)
        out["speedup_torch"] = _median(t_iu) / _median(t_pt)
        out["equal_results"] = bool(np.array_equal(m_np.intersection, inter)
                                    and np.array_equal(m_np.union, union))
        self.results["metrics"] = out


# ============================================================================ report

def _fmt(x: float | None, spec: str = ".2f") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return format(x, spec)


def _spread(s: dict[str, float], spec: str = ".2f") -> str:
    return f"{_fmt(s['median'], spec)} [{_fmt(s['min'], spec)}-{_fmt(s['max'], spec)}]"


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(headers)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()
    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in rows])


def format_report(results: dict[str, Any]) -> str:
    """The results as text tables."""
    out = []
    m = results.get("machine", {})
    out.append(f"mit_semseg benchmark: {m.get('device')} ({m.get('device_name')}), "
               f"{m.get('threads')} threads, torch {m.get('torch')}, "
               f"OMP_WAIT_POLICY={m.get('omp_wait_policy')}, load average "
               f"{m.get('load_avg_start')} -> {m.get('load_avg_end')}")
    if "original" in results:
        o = results["original"]
        out.append(f"original: {o.get('mit_semseg_file')} (torch {o.get('torch')})")
    peak = results.get("matmul_peak_gflops")
    if peak:
        out.append("matmul peak (torch.mm {0}^3): ".format(peak["n"]) + ", ".join(
            f"{k} {v:.0f} GFLOP/s" for k, v in peak.items() if k != "n"))
    mem_key = "peak_rss_mb" if m.get("device", "cpu").startswith("cpu") else "peak_alloc_mb"
    for section, title in (("single_scale", "Single-scale inference"),
                           ("multi_scale", "Multi-scale inference")):
        rows = results.get(section)
        if not rows:
            continue
        r0 = rows[0]
        size = "x".join(str(s) for s in reversed(r0["size"]))
        extra = f", scales {r0['scales']}" if "scales" in r0 else ""
        out.append(f"\n{title}, {size} image{extra}, batch 1: median [min-max] of the runs")
        table = []
        for r in rows:
            for i, (name, e) in enumerate(r["methods"].items()):
                agree = e.get(f"agreement_vs_{r['reference']}")
                if name.startswith("fast-") and e.get("agreement_vs_fast_fp32") is not None:
                    agree_s = f"{_fmt(agree, '.4%')} (vs fp32 {_fmt(e['agreement_vs_fast_fp32'], '.3%')})"
                else:
                    agree_s = _fmt(agree, ".4%") if agree is not None else ("ref" if name == r["reference"] else "-")
                if e.get("differing_pixels") and not name.startswith("fast-"):
                    agree_s += (f" ({e['differing_pixels']} px, ref margin "
                                f"<= {_fmt(e['max_ref_gap_at_differing'], '.0e')})")
                table.append([
                    r["pair"] if i == 0 else "", name, _spread(e["img_per_s"]),
                    _fmt(e["model_ms"]["median"], ".0f"), _fmt(e["post_ms"]["median"], ".0f"),
                    _fmt(e.get("gflops", r["gflops"]), ".1f")
                    if i == 0 or e.get("gflops", r["gflops"]) != r["gflops"] else "",
                    _fmt(e.get("achieved_gflops"), ".0f"), _fmt(e.get("share_of_peak"), ".0%"),
                    _fmt(e.get(mem_key), ".0f"), _fmt(e.get("transient_mb"), ".0f"),
                    _fmt(e.get("speedup"), ".2f") + ("x" if e.get("speedup") else ""), agree_s])
        out.append(_table(["pair", "method", "img/s", "model ms", "fusion ms", "GFLOP",
                           "GFLOP/s", "%peak", "peak MB", "+MB", f"speedup", "labels = ref"],
                          table))
    rows = results.get("training")
    if rows:
        r0 = rows[0]
        out.append(f"\nTraining step, batch {r0['batch']}, {r0['size']}x{r0['size']}: "
                   f"median [min-max] over iterations")
        table = []
        for r in rows:
            for i, (name, e) in enumerate(r["methods"].items()):
                diff = e.get(f"max_rel_loss_diff_vs_{r['reference']}")
                first = e.get(f"first_rel_loss_diff_vs_{r['reference']}")
                table.append([r["pair"] if i == 0 else "", name, _spread(e["it_per_s"]),
                              _fmt(e["img_per_s"]["median"]), _fmt(e["ms_per_it"]["median"], ".0f"),
                              _fmt(e.get(mem_key), ".0f"),
                              _fmt(e.get("speedup"), ".2f") + ("x" if e.get("speedup") else ""),
                              "ref" if name == r["reference"]
                              else f"{_fmt(first, '.1e')} / {_fmt(diff, '.1e')}",
                              _fmt(e["losses"][-1], ".4f")])
        out.append(_table(["pair", "method", "it/s", "img/s", "ms/it", "peak MB", "speedup",
                           "loss rel diff: first / max", "last loss"], table))
    d = results.get("data")
    if d:
        out.append(f"\nData loader (TrainDataset, batch {d['batch']}, synthetic "
                   f"~{d['image_side']} px images)")
        out.append(_table(["workers", "batches/s", "images/s", "ms/batch [min-max]"],
                          [[w, _fmt(v["batches_per_s"], ".1f"), _fmt(v["images_per_s"], ".1f"),
                            _spread(v["ms_per_batch"], ".1f") if "ms_per_batch" in v else "-"]
                           for w, v in d["loaders"].items()]))
        s = d.get("train_step_split")
        if s:
            out.append(f"training step fed in-process ({s['pair']}, fast): data "
                       f"{_fmt(s['data_ms']['median'], '.0f')} ms + compute "
                       f"{_fmt(s['compute_ms']['median'], '.0f')} ms per iteration "
                       f"(data {_fmt(s['data_share'], '.0%')})")
    mt = results.get("metrics")
    if mt:
        line = (f"\nMetrics, {mt['size']}x{mt['size']} maps, {mt['num_class']} classes: "
                f"intersectionAndUnion {_fmt(mt['intersectionAndUnion_ms']['median'], '.1f')} ms")
        if mt.get("confusion_numpy_ms"):
            line += (f"; confusion matrix {_fmt(mt['confusion_numpy_ms']['median'], '.1f')} ms numpy "
                     f"({_fmt(mt['speedup_numpy'], '.1f')}x), "
                     f"{_fmt(mt['confusion_torch_ms']['median'], '.1f')} ms torch "
                     f"({_fmt(mt['speedup_torch'], '.1f')}x); same intersection/union: "
                     f"{mt['equal_results']}")
        else:
            line += "; mit_semseg.metrics not available"
        out.append(line)
    return "\n".join(out)


# ============================================================================ CLI

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
        prog="python -m mit_semseg.benchmark",
        description="Measure inference, training, data-loading and metrics speed and memory.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--preset", choices=("default", "quick", "targets"), default="default",
                   help="quick: tiny sizes, one pair, one run (seconds); targets: the issue's "
                        "full set (4 single-scale pairs, longer)")
    p.add_argument("--quick", action="store_const", const="quick", dest="preset",
                   help="same as --preset quick")
    p.add_argument("--pairs", type=_csv, default=None,
                   help="ENCODER+DECODER pairs for single- and multi-scale inference")
    p.add_argument("--single-pairs", type=_csv, default=None, help="pairs for single-scale only")
    p.add_argument("--multi-pairs", type=_csv, default=None, help="pairs for multi-scale only")
    p.add_argument("--train-pairs", type=_csv, default=None, help="pairs for training")
    p.add_argument("--cfg", nargs="+", default=None,
                   help="take pairs, class count and multi-scale settings from config files")
    p.add_argument("--sections", type=_csv, default=list(SECTIONS),
                   help=f"what to measure: {','.join(SECTIONS)}")
    p.add_argument("--methods", type=_csv, default=["plain", "engine", "fast"],
                   help="inference methods: plain, engine, fast (fast-bf16/fast-fp16 follow "
                        "--precisions)")
    p.add_argument("--precisions", type=_csv, default=None,
                   help="fp32, bf16, fp16 (default: fp32, bf16 where the hardware has it, fp16 "
                        "on CUDA); training uses bf16 only (fp16 training: train.py's "
                        "TRAIN.precision with its GradScaler)")
    p.add_argument("--size", type=int, default=512, help="single-scale image side")
    p.add_argument("--photo", type=_size_pair, default=(480, 640),
                   help="multi-scale photo size HxW")
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
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--compare-original", metavar="PYTHON", default=None,
                   help="interpreter with the original implementation installed "
                        "(e.g. /tmp/orig_venv/bin/python); adds the 'original' method")
    p.add_argument("--json", metavar="PATH", default=None, help="also write the results as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    return p


def _apply_preset(args: argparse.Namespace) -> None:
    if args.preset == "quick":
        defaults = dict(pairs=["resnet18dilated+c1_deepsup"], train_pairs=["resnet18dilated+c1_deepsup"],
                        size=64, photo=(48, 64), scales=(32, 48), max_size=100, train_size=64,
                        train_iters=2, data_batches=2, data_images=4, data_workers=[0],
                        metrics_size=256, mm_size=256, runs=1, warmup=1, threads=1)
        for k, v in defaults.items():
            if getattr(args, k) == build_parser().get_default(k) or getattr(args, k) is None:
                setattr(args, k, v)
    elif args.preset == "targets":
        if args.single_pairs is None and args.pairs is None:
            args.single_pairs = list(TARGET_SINGLE_PAIRS)
    if args.cfg:
        from .config import cfg as base_cfg
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
    for s in args.sections:
        if s not in SECTIONS:
            raise SystemExit(f"unknown section '{s}'; expected some of {','.join(SECTIONS)}")
    if args.precisions is None:
        dev = _device(args.device)
        args.precisions = (["fp32"] + (["bf16"] if bf16_supported(dev) else [])
                           + (["fp16"] if dev.type == "cuda" else []))
    for prec in args.precisions:
        if prec not in ("fp32", "bf16", "fp16"):
            raise SystemExit(f"unknown precision '{prec}'; expected fp32, bf16 and/or fp16")


def _reexec_with_policy(policy: str, argv: Sequence[str]) -> None:
    wanted = policy.upper()
    if os.environ.get("OMP_WAIT_POLICY", "").upper() == wanted:
        return
    env = dict(os.environ, OMP_WAIT_POLICY=wanted)
    code = subprocess.call([sys.executable, "-m", "mit_semseg.benchmark", *argv], env=env)
    raise SystemExit(code)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; print the tables (and write JSON with --json); return the results."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.omp_wait_policy != "default":
        _reexec_with_policy(args.omp_wait_policy, argv)
    _apply_preset(args)
    bench = Bench(args)
    bench.start()
    try:
        runners = {"peak": bench.run_peak, "single": bench.run_single, "multi": bench.run_multi,
                   "train": bench.run_train, "data": bench.run_data, "metrics": bench.run_metrics}
        if "peak" not in args.sections and ({"single", "multi"} & set(args.sections)):
            bench.run_peak()  # the share of peak needs it
        for section in SECTIONS:
            if section in args.sections:
                runners[section]()
    finally:
        bench.close()
    results = bench.results
    results["settings"] = {k: (list(v) if isinstance(v, tuple) else v)
                           for k, v in vars(args).items()}
    print(format_report(results))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=1)
    return results


if __name__ == "__main__":
    if "--worker" in sys.argv[1:]:
        _worker_main()
    else:
        main()
