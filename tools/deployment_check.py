"""Measurements behind docs/deployment.md (not part of the test suite).

    python scripts/deployment_check.py presets   # export every preset pair, ORT vs PyTorch
    python scripts/deployment_check.py speed     # onnxruntime vs PyTorch, single/multi-scale
    python scripts/deployment_check.py slide     # sliding window on a 4000x3000 photo

Models use the parity weight rule (``mit_semseg.benchmark.rule_tensor``) with
the presets' fc_dim and 150 classes (no download). Photos: the sample photos
shipped with matplotlib / the Rust docs when present (cropped to odd sizes),
and synthetic scenes (``mit_semseg.data.synthetic.make_scene``).
"""
from __future__ import annotations

import argparse
import glob
import os
import resource
import statistics
import sys
import tempfile
import time

import numpy as np
import torch
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from mit_semseg.benchmark import rule_tensor  # noqa: E402
from mit_semseg.config import load_cfg  # noqa: E402
from mit_semseg.export import (compare_onnx, export_onnx, exportable,  # noqa: E402
                               metadata)
from mit_semseg.inference import InferenceEngine, Segmenter  # noqa: E402
from mit_semseg.models import build_model  # noqa: E402
from mit_semseg.inference.backends import OnnxBackend  # noqa: E402

SAMPLE_PHOTOS = [  # (glob, crop height, crop width): odd sizes
    ("/root/.pyenv/versions/*/lib/python*/site-packages/matplotlib/mpl-data/sample_data/"
     "grace_hopper.jpg", 599, 511),
    ("/root/.rustup/toolchains/*/share/doc/rust/html/embedded-book/assets/f3.jpg", 475, 719),
]


def photos(extra: tuple = ()) -> list[tuple[str, np.ndarray]]:
    """(name, H x W x 3 uint8) of the sample photos found (``SAMPLE_PHOTOS``, then
    ``extra`` entries of the same form), then two synthetic scenes."""
    from mit_semseg.data.synthetic import make_scene
    out = []
    for pattern, h, w in (*SAMPLE_PHOTOS, *extra):
        found = sorted(glob.glob(pattern))
        if found:
            img = np.asarray(Image.open(found[0]).convert("RGB"))[:h, :w]
            out.append((os.path.basename(found[0]) + f" {h}x{w}", np.ascontiguousarray(img)))
    for seed, (h, w) in enumerate([(337, 451), (289, 203)]):
        out.append((f"scene {h}x{w}", make_scene(np.random.default_rng(seed), h, w)[0]))
    return out


def rule_model(cfg):
    """The network of ``cfg`` filled by the parity weight rule."""
    net = build_model(cfg)
    net.load_state_dict({k: rule_tensor(k.split(".", 1)[1], v.shape)
                         for k, v in net.state_dict().items()})
    return net.eval()


def presets() -> list[str]:
    return sorted(glob.glob(os.path.join(ROOT, "config", "ade20k-*.yaml")))


def cmd_presets(args) -> None:
    images = photos()
    print("pair | export s | MiB | max |ORT-PT| (rel) at 64x64,97x75,75x131,33x47,301x229 | "
          "label agreement per photo (single scale 300, default PyTorch path)")
    for path in presets():
        cfg = load_cfg(path)
        net = rule_model(cfg)
        with tempfile.TemporaryDirectory() as tmp:
            onnx_path = os.path.join(tmp, "m.onnx")
            t = time.perf_counter()
            export_onnx(exportable(net), onnx_path, props=metadata(cfg))
            secs = time.perf_counter() - t
            size = os.path.getsize(onnx_path) / 2 ** 20
            diff_abs, diff_rel = compare_onnx(
                onnx_path, net, sizes=[(64, 64), (97, 75), (75, 131), (33, 47), (301, 229)])
            torch_seg = Segmenter(InferenceEngine(net, device="cpu"), cfg.DATASET)
            onnx_seg = Segmenter(InferenceEngine(None, device="cpu",
                                                 backend=OnnxBackend(onnx_path)), cfg.DATASET)
            agree = []
            for name, img in images:
                a = torch_seg.predict(img, imgSizes=[300])
                b = onnx_seg.predict(img, imgSizes=[300])
                agree.append(f"{name}: {(a == b).mean() * 100:.3f}%")
        pair = f"{cfg.MODEL.arch_encoder}+{cfg.MODEL.arch_decoder}"
        print(f"{pair} | {secs:.1f} | {size:.0f} | {diff_abs:.2e} ({diff_rel:.1e}) | "
              + "; ".join(agree), flush=True)


def _median_time(fn, runs: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def cmd_speed(args) -> None:
    torch.set_num_threads(args.threads)
    name, img = photos()[0]
    print(f"photo {name}; {args.threads} threads; median of {args.runs} runs after a warm-up; "
          f"load {os.getloadavg()[0]:.1f}")
    print("preset | scales | PyTorch default s | PyTorch exact s | onnxruntime s | ORT/default")
    for preset in args.presets:
        cfg = load_cfg(os.path.join(ROOT, "config", f"ade20k-{preset}.yaml"))
        net = rule_model(cfg)
        with tempfile.TemporaryDirectory() as tmp:
            onnx_path = os.path.join(tmp, "m.onnx")
            export_onnx(exportable(net), onnx_path, props=metadata(cfg))
            segs = {
                "default": Segmenter(InferenceEngine(net, device="cpu"), cfg.DATASET),
                "exact": Segmenter(InferenceEngine(net, device="cpu", exact=True),
                                   cfg.DATASET),
                "onnxruntime": Segmenter(InferenceEngine(
                    None, device="cpu",
                    backend=OnnxBackend(onnx_path, threads=args.threads)), cfg.DATASET),
            }
            for sizes in ([450], list(cfg.DATASET.imgSizes)):
                t = {k: _median_time(lambda s=s: s.predict(img, imgSizes=sizes), args.runs)
                     for k, s in segs.items()}
                print(f"{preset} | {sizes} | {t['default']:.2f} | {t['exact']:.2f} | "
                      f"{t['onnxruntime']:.2f} | {t['onnxruntime'] / t['default']:.2f}",
                      flush=True)


def _rss_mib() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cmd_slide(args) -> None:
    from mit_semseg.inference.slide import SlideWindow, predict_slide
    torch.set_num_threads(args.threads)
    _, small = photos()[1 if len(photos()) > 3 else 0]
    photo = np.asarray(Image.fromarray(small).resize((4000, 3000), Image.Resampling.BICUBIC))
    cfg = load_cfg(os.path.join(ROOT, "config", f"ade20k-{args.preset}.yaml"))
    net = rule_model(cfg)
    if args.backend == "onnxruntime":
        tmp = tempfile.mkdtemp()
        onnx_path = os.path.join(tmp, "m.onnx")
        export_onnx(exportable(net), onnx_path, props=metadata(cfg))
        engine = InferenceEngine(None, device="cpu",
                                 backend=OnnxBackend(onnx_path, threads=args.threads))
    else:
        engine = InferenceEngine(net, device="cpu")
    window = SlideWindow((args.crop, args.crop), (args.stride, args.stride), args.scale)
    # warm-up on a photo of two by two tiles: allocator pools, row plans, one-time
    # checks, one full tile's activations (so the peak below is the slide's own)
    side = int((args.crop + args.stride) / args.scale) + 1
    predict_slide(engine, photo[:side, :side].copy(), window)
    before = _rss_mib()
    t = time.perf_counter()
    pred = predict_slide(engine, photo, window)
    secs = time.perf_counter() - t
    from mit_semseg.inference.slide import tile_windows
    h, w = int(3000 * args.scale + 0.5), int(4000 * args.scale + 0.5)
    tiles = len(tile_windows(h, args.crop, args.stride)) * len(tile_windows(w, args.crop, args.stride))
    print(f"{args.preset} ({args.backend}), 4000x3000 photo, crop {args.crop}, stride "
          f"{args.stride}, scale {args.scale}: {tiles} tiles, {secs:.1f} s "
          f"({secs / tiles:.2f} s/tile), peak RSS {before:.0f} MiB before -> {_rss_mib():.0f} MiB; "
          f"a C x H x W float32 buffer would be "
          f"{cfg.DATASET.num_class * 3000 * 4000 * 4 / 2 ** 30:.1f} GiB; "
          f"labels {pred.labels.shape}, {len(np.unique(pred.labels))} classes; "
          f"load {os.getloadavg()[0]:.1f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("presets")
    speed = sub.add_parser("speed")
    speed.add_argument("--threads", type=int, default=2)
    speed.add_argument("--runs", type=int, default=3)
    speed.add_argument("--presets", nargs="+", default=[
        "resnet50dilated-ppm_deepsup", "resnet18dilated-ppm_deepsup",
        "mobilenetv2dilated-c1_deepsup"])
    slide = sub.add_parser("slide")
    slide.add_argument("--threads", type=int, default=2)
    slide.add_argument("--preset", default="resnet18dilated-ppm_deepsup")
    slide.add_argument("--backend", choices=["pytorch", "onnxruntime"], default="pytorch")
    slide.add_argument("--crop", type=int, default=512)
    slide.add_argument("--stride", type=int, default=341)
    slide.add_argument("--scale", type=float, default=1.0)
    args = parser.parse_args()
    torch.set_num_threads(getattr(args, "threads", 2))
    {"presets": cmd_presets, "speed": cmd_speed, "slide": cmd_slide}[args.cmd](args)


if __name__ == "__main__":
    main()
