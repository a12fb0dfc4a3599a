"""Section ``testpy`` (opt-in): ``test.py`` timed as a whole process.

For every multi-scale pair: ``--testpy-images`` synthetic photos of ``--photo``
size (JPEG), rule weights written as ``DIR/{encoder,decoder}_epoch_0.pth`` and a
config holding only the original's keys. Each variant runs

    python test.py --imgs IMGS --cfg CFG --gpu G DIR CKPT DATASET.imgSizes S
        TEST.result OUT TEST.checkpoint epoch_0.pth [TEST.exact True]

as a subprocess, timed wall-clock, variants alternated, multi-scale (the
``--scales``) and single-scale (the middle scale; only this with one scale).
Variants: ``default``, ``exact`` (``TEST.exact True``) and, with
``--compare-original PYTHON --original-repo DIR``, ``original`` (DIR/test.py
run by PYTHON in DIR; on a CPU through ``tools/cpu_shim.py``, which makes its CUDA
calls no-ops; if it fails anyway the report says so).
Labels are compared through the prediction half of the output PNGs.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

import numpy as np
from PIL import Image

from .harness import REPO_ROOT, Bench, Pair, median, scene, summary

CHECKPOINT = "epoch_0.pth"


def _write_images(folder: str, count: int, size: tuple[int, int]) -> None:
    os.makedirs(folder, exist_ok=True)
    for i in range(count):
        scene(size[0], size[1], seed=100 + i).save(os.path.join(folder, f"photo_{i}.jpg"),
                                                   quality=95)


def _write_checkpoint(pair: Pair, folder: str) -> None:
    """The pair's rule weights as ``folder/{encoder,decoder}_epoch_0.pth`` (hard links
    where possible)."""
    import shutil
    pair.build()  # writes the weight files once
    os.makedirs(folder, exist_ok=True)
    for src, part in ((pair.enc_weights, "encoder"), (pair.dec_weights, "decoder")):
        dst = os.path.join(folder, f"{part}_{CHECKPOINT}")
        try:
            os.link(src, dst)
        except OSError:
            shutil.copyfile(src, dst)


def _write_config(bench: Bench, pair: Pair, path: str) -> None:
    """A config with the original's keys only, so the original's test.py reads it too
    (plus ``MODEL.encoder_options`` for a newer family's pair that has them)."""
    a = bench.options
    options = "".join(f"    {k}: {json.dumps(v)}\n" for k, v in pair.options.items())
    with open(path, "w", encoding="utf-8") as f:
        f.write(f"DATASET:\n  num_class: {pair.num_class}\n  imgSizes: {tuple(a.scales)}\n"
                f"  imgMaxSize: {a.max_size}\n  padding_constant: {a.padding}\n"
                f"MODEL:\n  arch_encoder: \"{pair.enc_arch}\"\n"
                f"  arch_decoder: \"{pair.dec_arch}\"\n  fc_dim: {pair.fc_dim}\n"
                + (f"  encoder_options:\n{options}" if options else "")
                + f"TEST:\n  checkpoint: \"{CHECKPOINT}\"\n")


def _original_note(bench: Bench) -> str | None:
    """None when the original's test.py can run, else why not."""
    a = bench.options
    if not a.original_repo:
        return ("original test.py not timed: give --compare-original PYTHON and "
                "--original-repo DIR (a checkout of the original repository)")
    if not a.compare_original:
        return "original test.py not timed: --original-repo needs --compare-original PYTHON"
    if not os.path.isfile(os.path.join(a.original_repo, "test.py")):
        return f"original test.py not timed: {a.original_repo} holds no test.py"
    return None


def _labels(folder: str) -> dict[str, np.ndarray]:
    """The prediction half (colour per pixel) of every ``image | prediction`` PNG in ``folder``."""
    out = {}
    for name in sorted(os.listdir(folder)):
        if name.endswith(".png"):
            row = np.asarray(Image.open(os.path.join(folder, name)).convert("RGB"))
            out[name] = row[:, row.shape[1] // 2:]
    return out


def _png_agreement(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> dict[str, Any] | None:
    """Share of pixels of equal colour, over all images and the lowest per image."""
    if not a or sorted(a) != sorted(b):
        return None
    per = [float((a[k] == b[k]).all(axis=-1).mean()) for k in a if a[k].shape == b[k].shape]
    if len(per) != len(a):
        return None
    pixels = [a[k].shape[0] * a[k].shape[1] for k in a]
    return {"all": float(np.average(per, weights=pixels)), "min_image": min(per)}


def _command(bench: Bench, method: str, cfg: str, ckpt: str, imgs: str, out: str,
             sizes: tuple[int, ...]) -> tuple[list[str], str, dict[str, str]]:
    """(argv, working folder, environment) of one ``method`` run."""
    a, dev = bench.options, bench.device
    env = dict(os.environ)
    if a.threads:
        env["OMP_NUM_THREADS"] = str(a.threads)
    opts = ["DIR", ckpt, "DATASET.imgSizes", str(tuple(sizes)), "TEST.result", out,
            "TEST.checkpoint", CHECKPOINT]
    if method == "original":
        env.pop("PYTHONPATH", None)
        gpu = str(dev.index or 0)
        script = os.path.join(a.original_repo, "test.py")
        # on a CPU its CUDA calls become no-ops (cpu_shim.py)
        shim = [os.path.join(REPO_ROOT, "tools", "cpu_shim.py")] \
            if dev.type == "cpu" else []
        return ([a.compare_original, "-P", *shim, script, "--imgs", imgs,
                 "--cfg", cfg, "--gpu", gpu, *opts], a.original_repo, env)
    gpu = "cpu" if dev.type == "cpu" else str(dev.index or 0)
    extra = ["TEST.exact", "True"] if method == "exact" else []
    return ([sys.executable, os.path.join(REPO_ROOT, "test.py"), "--imgs", imgs, "--cfg", cfg,
             "--gpu", gpu, *opts, *extra], REPO_ROOT, env)


def _run(argv: list[str], cwd: str, env: dict[str, str]) -> tuple[float, str | None]:
    """Wall-clock seconds of the process, and its output's tail if it failed."""
    t0 = time.perf_counter()
    proc = subprocess.run(argv, cwd=cwd, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
    seconds = time.perf_counter() - t0
    return seconds, (None if proc.returncode == 0
                     else f"exit {proc.returncode}: {proc.stdout[-1500:]}")


def _case(bench: Bench, pair: Pair, mode: str, sizes: tuple[int, ...], methods: list[str],
          paths: dict[str, str], notes: list[str]) -> dict[str, Any]:
    a = bench.options
    outs = {m: os.path.join(bench.workdir, "testpy", f"out_{pair.name}_{mode}_{m}")
            for m in methods}
    times: dict[str, list[float]] = {m: [] for m in methods}
    for r in range(a.warmup + a.runs):
        for m in list(methods):
            argv, cwd, env = _command(bench, m, paths["cfg"], paths["ckpt"], paths["imgs"],
                                      outs[m], sizes)
            seconds, failure = _run(argv, cwd, env)
            if failure is not None:
                if m != "original":
                    raise RuntimeError(f"test.py ({m}) failed: {' '.join(argv)}\n{failure}")
                notes.append(f"original test.py failed, not timed: {' '.join(argv)}\n{failure}")
                methods.remove(m)
                del times[m]
            elif r >= a.warmup:
                times[m].append(seconds)
    ref = "original" if "original" in methods else "exact"
    labels = {m: _labels(outs[m]) for m in methods}
    row: dict[str, Any] = {"pair": pair.name, "mode": mode, "imgSizes": list(sizes),
                           "reference": ref, "methods": {}}
    for m in methods:
        entry: dict[str, Any] = {"seconds": summary(times[m]),
                                 "img_per_s": a.testpy_images / median(times[m])}
        if m != ref:
            entry["speedup"] = median(times[ref]) / median(times[m])
            entry["agreement_vs_" + ref] = _png_agreement(labels[m], labels[ref])
        if m == "default" and ref != "exact":
            entry["agreement_vs_exact"] = _png_agreement(labels[m], labels["exact"])
        row["methods"][m] = entry
    return row


def run_testpy(bench: Bench) -> None:
    """Section ``testpy`` for every ``--multi-pairs`` pair."""
    a = bench.options
    root = os.path.join(bench.workdir, "testpy")
    imgs = os.path.join(root, "images")
    _write_images(imgs, a.testpy_images, a.photo)
    note = _original_note(bench)
    notes = [note] if note else []
    modes = [("multi", tuple(a.scales)), ("single", (tuple(a.scales)[len(a.scales) // 2],))]
    if len(a.scales) == 1:
        modes = modes[1:]  # the same run twice
    rows = []
    for spec in a.multi_pairs:
        pair = Pair(spec, a.num_class, bench.workdir, (a.pair_options or {}).get(spec))
        paths = {"imgs": imgs, "ckpt": os.path.join(root, pair.name),
                 "cfg": os.path.join(root, f"{pair.name}.yaml")}
        _write_checkpoint(pair, paths["ckpt"])
        _write_config(bench, pair, paths["cfg"])
        for mode, sizes in modes:
            methods = (["original"] if note is None else []) + ["exact", "default"]
            bench.log(f"test.py {pair.name}, {a.testpy_images} images, imgSizes {list(sizes)}")
            rows.append(_case(bench, pair, mode, sizes, methods, paths, notes))
            if any(n.startswith("original test.py failed") for n in notes):
                note = notes[-1]  # not again for the next cases
    h, w = a.photo
    bench.results["testpy"] = {"images": a.testpy_images, "size": [h, w], "notes": notes,
                               "rows": rows}
