"""int8 rows (``--precisions ...,int8``): per single-scale pair, the onnxruntime
int8 model of ``python -m mit_semseg quantize`` next to onnxruntime fp32 and the
default PyTorch engine (fp32), timed alternately run by run on the same
``--size`` image, with

* images/s and the speed relative to the PyTorch default,
* labels equal to the PyTorch default's (fp32) and to onnxruntime fp32's,
* the export and quantization times (calibration on ``CALIBRATION_IMAGES``
  synthetic scenes of ``--size`` with the quantize command's defaults; where the
  CPU has no VNNI/AMX, 7- and 8-bit weights as the command tries them, the one
  closer to fp32 on two other scenes kept; the time counts both).

Weights follow the parity rule (``harness.Pair``), so labels are those of
untrained networks, whose class scores are closer than a trained model's: label
agreement here is a lower bound of what trained models keep. bf16 rows are the
``default-bf16`` method of the single section.
"""
from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

from ..data.transforms import normalize
from .harness import Bench, Pair, Recorder, agreement, median, resize_rules, scene, summary
from .report import _fmt, _table

CALIBRATION_IMAGES = 8
METHODS = ("default", "onnxruntime-fp32", "onnxruntime-int8")


def int8_case(bench: Bench, pair: Pair, size: int) -> dict[str, Any]:
    """Export, quantize and time one pair on a ``size`` x ``size`` scene."""
    from ..export.onnx import export_onnx, exportable
    from ..export.quantize import (DEFAULT_FP32_LAYERS, DEFAULT_METHOD, calibration_copies,
                                   int8_instructions, quantize_file, weight_widths)
    from ..inference import InferenceEngine
    from ..inference.backends import OnnxBackend
    a = bench.options
    network = pair.build(use_softmax=True)
    fp32_path = os.path.join(bench.workdir, f"{pair.name}.fp32.onnx")
    int8_path = os.path.join(bench.workdir, f"{pair.name}.int8.onnx")
    tic = time.perf_counter()
    export_onnx(exportable(network), fp32_path)
    export_s = time.perf_counter() - tic
    scenes = [scene(size, size, seed=100 + k) for k in range(CALIBRATION_IMAGES)]
    rule = resize_rules((size,), max(size, 1000), 8)
    checks = [normalize(scene(size, size, seed=200 + k)).unsqueeze(0) for k in range(2)]
    fp32_check = [OnnxBackend(fp32_path)(x).argmax(1) for x in checks]
    done, quantize_s, best = {}, 0.0, -1.0
    for reduce_range in weight_widths("auto", int8_instructions()):
        # as the quantize command: 7- and 8-bit weights where the CPU has no VNNI/AMX,
        # the one whose labels on other scenes stay closer to fp32's kept
        path = f"{int8_path}.{7 if reduce_range else 8}"
        run = quantize_file(fp32_path, path, calibration_copies(scenes, rule), count=len(scenes),
                            method=DEFAULT_METHOD, fp32_layers=DEFAULT_FP32_LAYERS,
                            reduce_range=reduce_range, progress=not a.quiet)
        quantize_s += run["seconds"]
        model = OnnxBackend(path)
        agree = float(np.mean([(model(x).argmax(1) == ref).float().mean().item()
                               for x, ref in zip(checks, fp32_check)]))
        if agree > best:
            best, done = agree, run
            os.replace(path, int8_path)
        else:
            os.remove(path)
    img = normalize(scene(size, size, seed=1)).unsqueeze(0).contiguous()
    engines = {"default": InferenceEngine(network, device="cpu"),
               "onnxruntime-fp32": InferenceEngine(None, device="cpu",
                                                   backend=OnnxBackend(fp32_path)),
               "onnxruntime-int8": InferenceEngine(None, device="cpu",
                                                   backend=OnnxBackend(int8_path))}
    labels: dict[str, Any] = {}
    recorder = Recorder()
    for r in range(a.warmup + a.runs):
        for m in METHODS:
            tic = time.perf_counter()
            out = engines[m].fuse([engines[m].scores(img)], (size, size)).labels
            if r >= a.warmup:
                recorder.add(m, {"total": time.perf_counter() - tic})
            labels[m] = np.asarray(out)
    ref = median([1.0 / t for t in recorder.field("default", "total")])
    row: dict[str, Any] = {"pair": pair.name, "size": [size, size], "export_s": export_s,
                           "quantize_s": quantize_s, "calibration_images": len(scenes),
                           "method": done["method"], "reduce_range": done["reduce_range"],
                           "fp32_layers": done["fp32_layers"],
                           "file_mb": {k: os.path.getsize(p) / 2 ** 20 for k, p in
                                       (("fp32", fp32_path), ("int8", int8_path))},
                           "methods": {}}
    for m in METHODS:
        rate = [1.0 / t for t in recorder.field(m, "total")]
        row["methods"][m] = {
            "img_per_s": summary(rate), "speed_vs_default": median(rate) / ref,
            "agreement_vs_default": agreement(labels[m], labels["default"]),
            "agreement_vs_onnxruntime_fp32": agreement(labels[m], labels["onnxruntime-fp32"])}
    for path in (fp32_path, int8_path):
        os.remove(path)
    return row


def run_int8(bench: Bench) -> None:
    """The int8 rows of every single-scale pair (CPU only: onnxruntime's CPU kernels)."""
    a = bench.options
    if bench.device.type != "cpu":
        bench.log("int8: skipped (onnxruntime's int8 kernels run on the CPU; use --gpus cpu)")
        return
    rows = []
    for spec in a.single_pairs:
        pair = Pair(spec, a.num_class, bench.workdir)
        bench.log(f"int8 {pair.name} {a.size}x{a.size}: export, quantize, time")
        rows.append(int8_case(bench, pair, a.size))
    bench.results["int8"] = rows


def format_int8(results: dict[str, Any]) -> str:
    """The int8 rows as a text table ('' when there are none)."""
    rows = results.get("int8")
    if not rows:
        return ""
    from ..export.quantize import int8_instructions
    table = []
    for r in rows:
        for m, e in r["methods"].items():
            s = e["img_per_s"]
            table.append([r["pair"] if m == "default" else "", m,
                          f"{_fmt(s['median'])} [{_fmt(s['min'])}-{_fmt(s['max'])}]",
                          f"{_fmt(e['speed_vs_default'])}x",
                          _fmt(e["agreement_vs_default"], ".3%"),
                          (f"{r['quantize_s']:.1f} s ({r['calibration_images']} images, "
                           f"{r['method']}, {7 if r['reduce_range'] else 8}-bit)")
                          if m == "onnxruntime-int8" else ""])
    have = int8_instructions()
    size = "x".join(str(s) for s in rows[0]["size"])
    head = (f"\n\nint8 (onnxruntime static QDQ), single scale {size}; this CPU's int8 "
            f"instructions: {', '.join(have) or 'none (no VNNI/AMX: int8 will not be faster)'}")
    return head + "\n" + _table(["pair", "method", "img/s [min-max]", "vs default",
                                 "labels = default fp32", "quantization"], table) + "\n"
