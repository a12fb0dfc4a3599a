"""Labels on real photos, side by side with the original (not part of the test suite).

    python scripts/photo_labels.py --compare-original /path/to/original/venv/bin/python \\
        --original-repo /path/to/semantic-segmentation-pytorch [--pairs A+B,C+D] [--scales 300,450]

For every pair, with the parity rule's weights (``mit_semseg.benchmark.Pair``),
``test.py`` segments the photos three ways: the original's (its repository's
test.py under its interpreter; on a CPU through ``tools/cpu_shim.py``),
this package's default and ``TEST.exact True``. The table gives, per photo, the
share of pixels whose label equals the original's (from the prediction half of
the output PNGs). Photos: ``deployment_check.photos()`` (the sample photos shipped with
matplotlib and the Rust documentation when present, cropped to odd sizes, and
two synthetic scenes), one more Rust-docs photo and, where scikit-image is
installed, five of its bundled photos.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import sysconfig

from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from deployment_check import photos  # noqa: E402
from mit_semseg.benchmark.harness import Bench, Pair  # noqa: E402
from mit_semseg.benchmark.testpy import (_command, _labels, _run, _write_checkpoint,  # noqa: E402
                                         _write_config)

_PURELIB = sysconfig.get_paths()["purelib"]
EXTRA_PHOTOS = [  # (glob, crop height, crop width), beside deployment_check's
    ("/root/.rustup/toolchains/*/share/doc/rust/html/embedded-book/assets/verify.jpeg", 477, 701),
    # scikit-image's bundled photos, where it is installed (pip install scikit-image)
    (os.path.join(_PURELIB, "skimage/data/astronaut.png"), 509, 497),
    (os.path.join(_PURELIB, "skimage/data/chelsea.png"), 299, 451),
    (os.path.join(_PURELIB, "skimage/data/coffee.png"), 397, 599),
    (os.path.join(_PURELIB, "skimage/data/rocket.jpg"), 427, 637),
    (os.path.join(_PURELIB, "skimage/data/motorcycle_left.png"), 497, 739),
]
PAIRS = ["mobilenetv2dilated+c1_deepsup", "resnet50dilated+ppm_deepsup", "resnet50+upernet",
         "hrnetv2+c1"]


def write_photos(folder: str) -> list[str]:
    """The photos as JPEG files in ``folder`` (the original's test.py finds only
    .jpg in a folder); returns their names."""
    os.makedirs(folder, exist_ok=True)
    names = []
    for label, img in photos(tuple(EXTRA_PHOTOS)):
        name = re.sub(r"[^A-Za-z0-9]+", "_", label).strip("_")
        Image.fromarray(img).save(os.path.join(folder, name + ".jpg"), quality=95)
        names.append(name)
    return names


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--compare-original", metavar="PYTHON", required=True,
                   help="an interpreter in which mit-semseg 1.0.0 (the original) is importable")
    p.add_argument("--original-repo", metavar="DIR", required=True,
                   help="a checkout of the original repository (its test.py)")
    p.add_argument("--pairs", default=",".join(PAIRS), help="ENCODER+DECODER pairs")
    p.add_argument("--scales", default="300,375,450,525,600", help="DATASET.imgSizes")
    p.add_argument("--max-size", type=int, default=1000, help="DATASET.imgMaxSize")
    a = p.parse_args()
    args = argparse.Namespace(device="cpu", threads=0, quiet=False, scales=tuple(
        int(s) for s in a.scales.split(",")), max_size=a.max_size, padding=8,
        compare_original=a.compare_original, original_repo=a.original_repo)
    bench = Bench(args)
    imgs = os.path.join(bench.workdir, "photos")
    names = write_photos(imgs)
    print(f"photos (in the order of the columns): {', '.join(sorted(names))}; "
          f"imgSizes {list(args.scales)}, workdir {bench.workdir}")
    print("pair | method | share of pixels labelled as by the original, per photo | worst")
    for spec in a.pairs.split(","):
        pair = Pair(spec, 150, bench.workdir)
        ckpt = os.path.join(bench.workdir, pair.name)
        cfg = os.path.join(bench.workdir, f"{pair.name}.yaml")
        _write_checkpoint(pair, ckpt)
        _write_config(bench, pair, cfg)
        labels = {}
        for method in ("original", "default", "exact"):
            out = os.path.join(bench.workdir, f"out_{pair.name}_{method}")
            argv, cwd, env = _command(bench, method, cfg, ckpt, imgs, out, args.scales)
            seconds, failure = _run(argv, cwd, env)
            if failure is not None:
                raise SystemExit(f"test.py ({method}) failed: {' '.join(argv)}\n{failure}")
            labels[method] = _labels(out)
        ref = labels["original"]
        for method in ("default", "exact"):
            shares = [float((labels[method][k] == ref[k]).all(axis=-1).mean()) for k in sorted(ref)]
            print(f"{pair.name} | {method} | "
                  + ", ".join(f"{100 * s:.4f}%" for s in shares) + f" | {100 * min(shares):.4f}%",
                  flush=True)


if __name__ == "__main__":
    main()
