"""Label agreement of every downstream path on the modern presets at odd input sizes.

For each preset (full size, 150 classes, random weights with the class layer scaled up
so that many classes win; no download), on a synthetic photo of odd size:

* test.py (a separate process) vs ``Segmenter`` in whole-image mode, and in slide mode
  with tiles that are no multiple of 32 (nor of Swin's 7x7 windows, nor of DINOv2's 14);
* the web API's labels vs ``Segmenter``;
* ``export`` to ONNX (dynamic height and width), then onnxruntime vs PyTorch: the largest
  score difference at odd sizes, and the labels in whole and slide mode (or the one line
  export prints for a model it cannot export at dynamic sizes).

    python tools/preset_agreement.py [--presets convnext_tiny-upernet segformer_b0 ...]
        [--photo 181x243]

Needs the [timm] extra for the timm and DINOv2 presets (and [onnx], [web] for those
rows). Prints one table per preset.
"""
from __future__ import annotations

import argparse
import base64
import contextlib
import io
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from mit_semseg.config import load_cfg  # noqa: E402
from mit_semseg.data.synthetic import make_scene  # noqa: E402
from mit_semseg.inference import Segmenter  # noqa: E402
from mit_semseg.inference.slide import SlideWindow  # noqa: E402
from mit_semseg.models import build_model  # noqa: E402

# small scales so that a CPU run takes minutes; the network is the preset's
OPTS = ["MODEL.pretrained", "False", "DATASET.imgSizes", "(160,)", "DATASET.imgMaxSize", "400",
        "TEST.checkpoint", "epoch_20.pth", "TEST.workers", "0", "TEST.mode", "whole"]
WINDOW = SlideWindow((96, 112), (64, 75))
PRESETS = ["convnext_tiny-upernet", "swin_tiny-upernet", "segformer_b0", "segformer_b2",
           "dinov2_vits14-linear", "dinov2_vits14-ms"]


def _model(preset: str, folder: str) -> str:
    cfg = load_cfg(os.path.join(ROOT, "config", f"ade20k-{preset}.yaml"),
                   OPTS + ["DIR", folder])
    torch.manual_seed(0)
    net = build_model(cfg)
    with torch.no_grad():
        for name in net.decoder.class_layers:
            net.decoder.get_submodule(name).weight.mul_(20.0)
    os.makedirs(folder, exist_ok=True)
    for part, state in net.state_dicts().items():
        torch.save(state, os.path.join(folder, f"{part}_epoch_20.pth"))
    path = os.path.join(folder, "config.yaml")
    with open(path, "w") as fh:
        fh.write(cfg.dump())
    return path


def _test_py(cfg: str, image: np.ndarray, folder: str, *opts: str) -> np.ndarray:
    src = os.path.join(folder, "photo.png")
    Image.fromarray(image).save(src)
    out = os.path.join(folder, "out")
    res = subprocess.run([sys.executable, os.path.join(ROOT, "test.py"), "--imgs", src, "--cfg",
                          cfg, "--gpu", "cpu", "TEST.result", out, "TEST.save_labels", "True",
                          *opts], capture_output=True, text=True, cwd=ROOT)
    if res.returncode:
        raise SystemExit(res.stderr[-2000:])
    return np.asarray(Image.open(os.path.join(out, "photo_labels.png"))).astype(np.int64) - 1


def _web(cfg: str, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from fastapi.testclient import TestClient

    from mit_semseg.web.app import create_app
    from mit_semseg.web.images import read_label_png
    from mit_semseg.web.models import WebModel
    web = WebModel.from_config(cfg, device="cpu")
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    with TestClient(create_app([web])) as client:
        res = client.post("/api/segment", files={"file": ("p.png", buf.getvalue(), "image/png")})
    res.raise_for_status()
    answer = res.json()
    labels = read_label_png(base64.b64decode(answer["labels_png"]))
    # the page's own defaults (single scale, no flip) are in the answer
    return labels, web.segmenter.predict(image, imgSizes=answer["scales"], flip=answer["flip"])


def _pct(a: np.ndarray, b: np.ndarray) -> str:
    return f"{100.0 * float((a == b).mean()):.3f}%"


def run(preset: str, size: tuple[int, int]) -> list[tuple[str, str]]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cfg = _model(preset, os.path.join(tmp, "model"))
        rng = np.random.default_rng(0)
        image, _ = make_scene(rng, *size)
        seg = Segmenter.from_config(cfg, device="cpu")
        whole = seg(image)
        rows.append(("classes in the whole-image labels", str(len(np.unique(whole)))))
        rows.append(("test.py = Segmenter (whole)", _pct(_test_py(cfg, image, tmp), whole)))
        seg.slide = WINDOW
        tiles = seg(image)
        crop = f"[{WINDOW.crop_size[0]}, {WINDOW.crop_size[1]}]"
        stride = f"[{WINDOW.stride[0]}, {WINDOW.stride[1]}]"
        rows.append((f"test.py = Segmenter (slide {crop} stride {stride})",
                     _pct(_test_py(cfg, image, tmp, "TEST.mode", "slide", "TEST.crop_size",
                                   crop, "TEST.stride", stride), tiles)))
        try:
            web, ref = _web(cfg, image)
            rows.append(("web API = Segmenter", _pct(web, ref)))
        except ImportError:
            rows.append(("web API = Segmenter", "skipped ([web] extra missing)"))
        try:
            from mit_semseg.commands import export
            from mit_semseg.export import compare_onnx
        except ImportError:
            rows.append(("ONNX", "skipped ([onnx] extra missing)"))
            return rows
        path = os.path.join(tmp, "model.onnx")
        t0 = time.perf_counter()
        said = io.StringIO()
        with contextlib.redirect_stderr(said):
            code = export.main(["--cfg", cfg, "--onnx", path])
        if code != 0:
            rows.append(("export", f"exit {code}: {said.getvalue().strip().splitlines()[-1]}"))
            return rows
        rows.append(("export + onnxruntime check (s)", f"{time.perf_counter() - t0:.0f}"))
        c = load_cfg(cfg)
        net = build_model(c, tuple(os.path.join(c.DIR, f"{p}_epoch_20.pth")
                                   for p in ("encoder", "decoder"))).eval()
        worst_abs, worst_rel = compare_onnx(path, net, ((97, 75), size))
        rows.append(("onnxruntime vs PyTorch scores, 97x75 and photo size",
                     f"max abs {worst_abs:.1e}, relative {worst_rel:.1e}"))
        for slide in (False, WINDOW):
            onnx = Segmenter.from_config(cfg, device="cpu", backend="onnxruntime",
                                         onnx_path=path, slide=slide)
            torch_seg = Segmenter.from_config(cfg, device="cpu", slide=slide)
            rows.append((f"onnxruntime = PyTorch labels ({'slide' if slide else 'whole'})",
                         _pct(onnx(image), torch_seg(image))))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", nargs="+", default=PRESETS,
                        help="config/ade20k-<PRESET>.yaml (default: all modern presets)")
    parser.add_argument("--photo", default="181x243", help="HxW of the odd-sized photo")
    args = parser.parse_args()
    size = tuple(int(v) for v in args.photo.split("x"))
    for preset in args.presets:
        print(f"\nconfig/ade20k-{preset}.yaml, {size[0]}x{size[1]} photo, random weights",
              flush=True)
        for name, value in run(preset, size):
            print(f"  {name:<58} {value}", flush=True)


if __name__ == "__main__":
    main()
