"""Section ``slide`` (opt-in): sliding-window inference (``TEST.mode slide``) on
one large photo, and what its stitching costs.

One synthetic photo of ``--slide-photo`` size is segmented by ``slide_predict``
(crop ``--slide-crop``, stride ``--slide-stride``, ``--slide-scale``; the
``--slide-pair`` network with parity-rule weights, through the default
``InferenceEngine`` as test.py runs it) twice over:

* ``network``: the real network; the time spent inside it is measured too, the
  rest is the stitching (resizing, averaging, softmax, argmax);
* ``no-op``: a network returning precomputed scores of the real one's shape
  (``[1, C, ceil(h/8), ceil(w/8)]`` for stride-8 models), so all that is left
  is the stitching.

Each is reported as wall seconds, CPU seconds of this process (both threads
count) and peak memory (RSS on a CPU, allocated memory on CUDA). The no-op
runs ``--runs`` times after ``--warmup`` runs (median); the real network once,
warmed up by a run on every tile shape (which also gives the no-op its shapes).
"""
from __future__ import annotations

import time
from typing import Any, Callable

import torch

from .harness import Bench, MemoryProbe, Pair, median, scene, sync
from .options import BenchmarkOptions

DEFAULTS = {"photo": (1500, 2000), "crop": (512, 512), "stride": (341, 341),
            "pair": "resnet18dilated+ppm_deepsup"}
QUICK = {"photo": (120, 160), "crop": (64, 64), "stride": (43, 43),
         "pair": "resnet18dilated+c1_deepsup"}


def _options(a: BenchmarkOptions) -> dict[str, Any]:
    """The section's settings: the ``slide_*`` options, else the preset's."""
    base = QUICK if a.preset == "quick" else DEFAULTS
    return {"photo": a.slide_photo or base["photo"], "pair": a.slide_pair or base["pair"],
            "crop": a.slide_crop or base["crop"], "stride": a.slide_stride or base["stride"],
            "scale": a.slide_scale, "flip": bool(a.slide_flip)}


class _NoOp:
    """A network that returns, per input shape, fixed random scores of the real
    network's output shape (made by ``prepare``, outside the timed runs)."""

    def __init__(self, real: Callable[[torch.Tensor], torch.Tensor], device: torch.device) -> None:
        self.real, self.device = real, device
        self.cache: dict[tuple[int, ...], torch.Tensor] = {}

    def prepare(self, shapes: list[tuple[int, ...]]) -> None:
        for shape in shapes:
            out_shape = tuple(self.real(torch.zeros(shape, device=self.device)).shape)
            gen = torch.Generator().manual_seed(len(self.cache))
            self.cache[shape] = (torch.randn(out_shape, generator=gen) * 4).to(self.device)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.cache[tuple(x.shape)]


def _tiles(photo: tuple[int, int], window: Any) -> list[tuple[int, int]]:
    """(height, width) of every tile of the photo, row-major."""
    from ..inference.slide import tile_windows
    h, w = photo
    if window.scale != 1.0:
        h, w = max(1, int(h * window.scale + 0.5)), max(1, int(w * window.scale + 0.5))
    return [(y1 - y0, x1 - x0)
            for y0, y1 in tile_windows(h, window.crop_size[0], window.stride[0])
            for x0, x1 in tile_windows(w, window.crop_size[1], window.stride[1])]


def _timed(fn: Callable[[], Any], device: torch.device) -> dict[str, Any]:
    with MemoryProbe(device) as mem:
        sync(device)
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        sync(device)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"wall_s": wall, "cpu_s": cpu, "peak_mb": mem.peak_mb, "delta_mb": mem.delta_mb}


def run_slide(bench: Bench) -> None:
    """Section ``slide``: slide mode with the real network and with a no-op one."""
    import numpy as np

    from ..inference.engine import InferenceEngine
    from ..inference.slide import SlideWindow, slide_predict
    a, dev = bench.options, bench.device
    o = _options(a)
    pair = Pair(o["pair"], a.num_class, bench.workdir, (a.pair_options or {}).get(o["pair"]))
    engine = InferenceEngine(pair.build(use_softmax=True).to(dev), device=dev)
    window = SlideWindow(o["crop"], o["stride"], o["scale"])
    photo = np.asarray(scene(o["photo"][0], o["photo"][1], seed=7).convert("RGB"))
    tiles = _tiles(o["photo"], window)
    bench.log(f"slide {pair.name} {o['photo'][1]}x{o['photo'][0]} photo, {len(tiles)} tiles "
              f"{window.crop_size} stride {window.stride}, scale {window.scale}, "
              f"flip {o['flip']}")

    spent = {"wall_s": 0.0, "cpu_s": 0.0}

    def network(x: torch.Tensor) -> torch.Tensor:
        sync(dev)
        c0, t0 = time.process_time(), time.perf_counter()
        out = engine.scores(x)
        sync(dev)
        spent["wall_s"] += time.perf_counter() - t0
        spent["cpu_s"] += time.process_time() - c0
        return out

    noop = _NoOp(engine.scores, dev)
    with torch.inference_mode():
        noop.prepare(sorted({(1, 3) + t for t in tiles}))  # also warms the network up

    def run(fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
        return slide_predict(fn, photo, window, a.num_class, flip=o["flip"], device=dev)

    for _ in range(max(0, a.warmup)):
        run(noop)
    noop_runs = [_timed(lambda: run(noop), dev) for _ in range(max(1, a.runs))]
    real = _timed(lambda: run(network), dev)
    real.update({"network_wall_s": spent["wall_s"], "network_cpu_s": spent["cpu_s"],
                 "stitch_wall_s": real["wall_s"] - spent["wall_s"],
                 "stitch_cpu_s": real["cpu_s"] - spent["cpu_s"]})
    noop_entry: dict[str, Any] = {
        k: median([r[k] for r in noop_runs]) if all(r[k] is not None for r in noop_runs)
        else None for k in ("wall_s", "cpu_s", "peak_mb", "delta_mb")}
    noop_entry["runs"] = noop_runs
    bench.results["slide"] = {
        "pair": pair.name, "photo": list(o["photo"]), "crop": list(window.crop_size),
        "stride": list(window.stride), "scale": window.scale, "flip": o["flip"],
        "num_class": a.num_class, "tiles": len(tiles), "network": real, "noop": noop_entry,
        "overhead_share": noop_entry["wall_s"] / real["wall_s"] if real["wall_s"] > 0 else None,
    }


def format_slide(results: dict[str, Any]) -> str:
    """The section's table ("" when it did not run)."""
    s = results.get("slide")
    if not s:
        return ""
    from .report import _fmt, _table
    cpu = results.get("machine", {}).get("device", "cpu").startswith("cpu")
    net, noop = s["network"], s["noop"]
    rows = [["network", _fmt(net["wall_s"]), _fmt(net["cpu_s"]),
             f"{_fmt(net['network_wall_s'])} / {_fmt(net['network_cpu_s'])}",
             f"{_fmt(net['stitch_wall_s'])} / {_fmt(net['stitch_cpu_s'])}",
             _fmt(net["peak_mb"], ".0f"), _fmt(net["delta_mb"], ".0f")],
            ["no-op", _fmt(noop["wall_s"]), _fmt(noop["cpu_s"]), "-",
             f"{_fmt(noop['wall_s'])} / {_fmt(noop['cpu_s'])}",
             _fmt(noop["peak_mb"], ".0f"), _fmt(noop["delta_mb"], ".0f")]]
    h, w = s["photo"]
    return "\n".join([
        f"\nSlide mode (TEST.mode slide), {s['pair']}, {w}x{h} photo, {s['num_class']} "
        f"classes, crop {s['crop'][0]}x{s['crop'][1]}, stride {s['stride'][0]}x"
        f"{s['stride'][1]}, scale {s['scale']}, flip {s['flip']}: {s['tiles']} tiles. "
        "no-op: a network returning fixed scores of the real one's shape (what is left is "
        "the stitching), median of the runs",
        _table(["run", "wall s", "CPU s", "in network wall/CPU s",
                "stitching wall/CPU s", "peak RSS MB" if cpu else "peak alloc MB", "+MB"],
               rows),
        f"stitching overhead: the no-op run takes {_fmt(s['overhead_share'], '.1%')} of the "
        "real run's wall time"])
