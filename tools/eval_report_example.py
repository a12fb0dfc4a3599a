"""Write an example evaluation report for 150 ADE20K classes from synthetic data.

Label maps are blobby regions whose classes follow ADE20K-like skew (a few
classes cover most pixels); predictions move the region borders, swap some
regions for a confusable class (rare classes more often) and add speckles.
The maps go through ``SegmentationMetrics`` with per-image results and
boundary IoU, the 10 worst images become panels, and the page is written to
``--out``. ``--screenshot PNG`` also captures it in headless Chromium
(needs selenium, chromium and chromedriver).

    python tools/eval_report_example.py --out /tmp/report.html --screenshot docs/eval-report.png
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from mit_semseg.evaluation.html_report import WorstPanels, write_html_report  # noqa: E402
from mit_semseg.evaluation.metrics import SegmentationMetrics  # noqa: E402
from mit_semseg.utils import ade20k_colors, ade20k_names  # noqa: E402


def _voronoi(seeds: np.ndarray, weights: np.ndarray, size: int, rng: np.random.Generator,
             warp: float) -> np.ndarray:
    """Index of the nearest seed (weighted distance) for each pixel of a warped grid."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    phase = rng.random(4) * 6.28
    yy = yy + warp * np.sin(xx / 7.0 + phase[0]) + warp * 0.5 * np.sin(yy / 4.0 + phase[1])
    xx = xx + warp * np.sin(yy / 6.0 + phase[2]) + warp * 0.5 * np.cos(xx / 5.0 + phase[3])
    d = (yy[None] - seeds[:, 0, None, None]) ** 2 + (xx[None] - seeds[:, 1, None, None]) ** 2
    return np.argmin(d / weights[:, None, None] ** 2, axis=0)


def synthetic_set(num_images: int = 300, size: int = 64, num_class: int = 150, seed: int = 0):
    """Yield (name, image, label, pred) with ADE20K-like class skew."""
    rng = np.random.default_rng(seed)
    colors = ade20k_colors()
    ranks = np.arange(1, num_class + 1)
    freq = 1.0 / ranks ** 1.05
    freq /= freq.sum()
    # each class is mostly confused with one or two frequent classes
    partners = [rng.choice(np.arange(min(num_class, 25)), size=2, replace=False)
                for _ in range(num_class)]
    for n in range(num_images):
        m = int(rng.integers(3, 9))
        classes = rng.choice(num_class, size=m, replace=False, p=freq)
        seeds = rng.random((m, 2)).astype(np.float32) * size
        weights = (0.6 + 3.0 * np.sqrt(freq[classes] / freq[0])).astype(np.float32)
        label = classes[_voronoi(seeds, weights, size, rng, warp=3.0)]
        # the prediction: borders moved, some regions swapped, speckles
        jitter = seeds + rng.normal(0, 2.5, seeds.shape).astype(np.float32)
        pred_regions = _voronoi(jitter, weights, size, rng, warp=3.5)
        pred_classes = classes.copy()
        for r, c in enumerate(classes):
            p_wrong = 0.05 + 0.45 * (c / num_class) ** 0.8
            if rng.random() < p_wrong:
                pred_classes[r] = partners[c][int(rng.integers(2))]
        pred = pred_classes[pred_regions]
        for _ in range(int(rng.integers(0, 4))):
            y, x = rng.integers(0, size, 2)
            r = int(rng.integers(2, 6))
            pred[max(0, y - r):y + r, max(0, x - r):x + r] = rng.choice(num_class, p=freq)
        # a "photo": softened class colours, shading and noise
        base = 0.55 * colors[label].astype(np.float32) + 0.45 * np.array([150, 140, 125])
        shade = np.linspace(0.7, 1.15, size, dtype=np.float32)[:, None, None]
        image = np.clip(base * shade + rng.normal(0, 10, base.shape), 0, 255).astype(np.uint8)
        # unlabeled pixels, as ADE20K's 0
        holes = rng.random((size // 8, size // 8)) < 0.06
        label = np.where(np.kron(holes, np.ones((8, 8), bool)), -1, label)
        yield f"validation/ADE_val_{n + 1:08d}.jpg", image, label, pred


def build(out: str, num_images: int = 300) -> str:
    """Evaluate the synthetic set and write the report to ``out``; returns ``out``."""
    names = ade20k_names()
    metrics = SegmentationMetrics(150, per_image=True, boundary=True)
    worst = WorstPanels(10, ade20k_colors())
    for name, image, label, pred in synthetic_set(num_images):
        metrics.update(pred, label, name=name)
        worst.offer(metrics.images[-1].mean_iou, name, image, label, pred)
    record = {"checkpoint": "epoch_20.pth",
              "encoder": "ckpt/ade20k-resnet50dilated-ppm_deepsup/encoder_epoch_20.pth",
              "decoder": "ckpt/ade20k-resnet50dilated-ppm_deepsup/decoder_epoch_20.pth",
              "list_val": "./data/validation.odgt (synthetic example)",
              "imgSizes": [300, 375, 450, 525, 600], "flip": False, "precision": "fp32",
              "backend": "pytorch", "mode": "whole", **metrics.summary(names),
              "inference_time_per_image_s": 0.1234}
    return write_html_report(record, out, panels=worst.panels())


def screenshot(html_path: str, png_path: str, width: int = 1400, height: int = 0) -> None:
    """Capture ``html_path`` in headless Chromium, ``width`` CSS pixels wide and
    ``height`` high (0: the whole page), as a 256-colour PNG."""
    from PIL import Image
    from selenium import webdriver

    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium") or shutil.which("chromium-browser")
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--window-size={width},1200", "--force-device-scale-factor=1",
                "--hide-scrollbars"):
        opts.add_argument(arg)
    service = webdriver.ChromeService(executable_path=shutil.which("chromedriver"))
    driver = webdriver.Chrome(service=service, options=opts)
    try:
        driver.get("file://" + os.path.abspath(html_path))
        full = driver.execute_script("return document.documentElement.scrollHeight")
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
            "width": width, "height": int(height or full), "deviceScaleFactor": 1,
            "mobile": False})
        driver.execute_script("window.dispatchEvent(new Event('resize'))")
        driver.execute_script("return new Promise(r => setTimeout(r, 300))")
        driver.save_screenshot(png_path)
    finally:
        driver.quit()
    # screenshots are mostly flat colours: a palette keeps the file small
    with Image.open(png_path) as im:
        im.convert("RGB").quantize(256, method=Image.Quantize.FASTOCTREE).save(png_path,
                                                                               optimize=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="eval-report-example.html")
    ap.add_argument("--images", type=int, default=300)
    ap.add_argument("--screenshot", help="also save a screenshot of the whole page, 1400 "
                    "pixels wide, here (PNG)")
    args = ap.parse_args(argv)
    path = build(args.out, args.images)
    print(f"{path}: {os.path.getsize(path):,} bytes")
    if args.screenshot:
        screenshot(path, args.screenshot)
        print(f"{args.screenshot}: {os.path.getsize(args.screenshot):,} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
