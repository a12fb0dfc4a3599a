"""Work and the machine's capacity: model GFLOPs counted with forward hooks, and
the matmul peak that achieved GFLOP/s are compared with."""
from __future__ import annotations

import copy
import math
import time
from typing import Any, Sequence

import torch
import torch.nn as nn

from .harness import Bench, sync


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int, runs: int) -> float:
    """Best GFLOP/s of an n x n x n torch.mm in ``dtype``."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    out = torch.empty(n, n, device=device, dtype=dtype)
    torch.mm(a, b, out=out)
    best = float("inf")
    for _ in range(max(1, runs)):
        sync(device)
        t = time.perf_counter()
        torch.mm(a, b, out=out)
        sync(device)
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
    from ..accel import factorize_pyramids_
    from ..models import decoders
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


def run_peak(bench: Bench) -> None:
    """Section ``peak``: the matmul peak per precision measured (fp32, bf16/fp16 as run)."""
    a, dev = bench.options, bench.device
    n = a.mm_size
    out: dict[str, float] = {"n": n, "fp32": matmul_peak(dev, torch.float32, n, a.runs + 1)}
    if "bf16" in a.precisions:
        out["bf16"] = matmul_peak(dev, torch.bfloat16, n, a.runs + 1)
    if "fp16" in a.precisions or dev.type == "cuda":
        out["fp16"] = matmul_peak(dev, torch.float16, n, a.runs + 1)
    bench.peaks = out
    bench.results["matmul_peak_gflops"] = out
    bench.log("matmul peak: " + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in out.items()
                                          if k != "n"))
