"""What eval.py, eval_multipro.py and test.py do, as functions.

* ``evaluate(cfg, device)``: one process over ``DATASET.list_val``.
* ``evaluate_multiprocess(cfg, devices)``: the list split into contiguous
  parts, one process per device (GPUs, or CPU processes); their confusion
  matrices are summed, so the numbers equal ``evaluate``'s exactly.
* ``run_test(cfg, imgs, device)``: segment a file, a folder (recursively) or
  an odgt list; unreadable images are reported and skipped.

Evaluation prints a per-class table, the original's summary line
(``Mean IoU: 0.xxxx, Accuracy: xx.xx%``) and writes the results as JSON to
``DIR/eval_<checkpoint>.json``. ``VAL.visualize`` writes
image | ground truth | prediction PNGs to ``DIR/result/``.
"""
from __future__ import annotations

import json
import os
import queue as queue_module
import sys
import time
import traceback
from collections import Counter
from typing import Any, Sequence, TextIO

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm
from yacs.config import CfgNode

from .checkpoint import CheckpointError
from .dataset import DatasetError, TestDataset, ValDataset
from .inference import (CheckpointNotFoundError, DeviceUnavailableError, InferenceEngine,
                        build_engine, checkpoint_paths, describe_labels, resolve_device)
from .lib.nn import user_scattered_collate
from .metrics import SegmentationMetrics
from .models import WeightsError
from .slide import SlideWindow, predict_slide, slide_options
from .utils import (IMAGE_EXTENSIONS, class_colors, class_names, colorEncode, cpu_count,
                    find_recursive, loader_workers, tune_allocator)

__all__ = ["evaluate", "validate", "evaluate_multiprocess", "run_test", "result_names",
           "list_test_images", "results_path", "eval_main", "eval_multipro_main", "test_main"]


# ============================================================================ output names

def result_names(paths: Sequence[str], base: str | None = None) -> list[str]:
    """One output name per input path: its path relative to ``base`` (default: the
    inputs' common folder) with the extension replaced by ``.png``. Names that
    would clash keep their extension (``a.jpg.png``, ``a.png.png``); remaining
    clashes get ``_2``, ``_3``... Comparison ignores case."""
    if not paths:
        return []
    absolute = [os.path.abspath(p) for p in paths]
    if base is None:
        base = os.path.commonpath([os.path.dirname(p) for p in absolute])
    rel = [os.path.relpath(p, os.path.abspath(base)) for p in absolute]
    rel = [r if not r.startswith("..") else os.path.basename(r) for r in rel]
    names = [os.path.splitext(r)[0] + ".png" for r in rel]
    clash = Counter(n.lower() for n in names)
    names = [r + ".png" if clash[n.lower()] > 1 else n for n, r in zip(names, rel)]
    out: list[str] = []
    used: set[str] = set()
    for name in names:
        candidate, k = name, 2
        while candidate.lower() in used:
            candidate, k = f"{name[:-4]}_{k}.png", k + 1
        used.add(candidate.lower())
        out.append(candidate)
    return out


def results_path(cfg: CfgNode) -> str:
    """``DIR/eval_<checkpoint without .pth>.json``."""
    stem = os.path.splitext(os.path.basename(cfg.VAL.checkpoint))[0]
    return os.path.join(cfg.DIR, f"eval_{stem}.json")


def _save_png(array: np.ndarray, path: str) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    # zlib level 1: the same pixels, about 3x faster to write than PIL's default
    # level 6, files a few percent larger
    Image.fromarray(array).save(path, compress_level=1)


# ============================================================================ evaluation

def _engine(cfg: CfgNode, node: CfgNode, device: Any) -> InferenceEngine:
    """The engine of ``node`` (cfg.VAL or cfg.TEST): the PyTorch model with
    ``DIR/{encoder,decoder}_<node.checkpoint>``, or the onnxruntime graph ``node.onnx``."""
    enc = dec = ""
    if str(node.backend).lower() != "onnxruntime":
        enc, dec = checkpoint_paths(cfg.DIR, node.checkpoint)
    return build_engine(cfg, enc, dec, device=device, flip=node.flip, precision=node.precision,
                        exact=node.exact, backend=node.backend, onnx_path=node.onnx)


def _val_engine(cfg: CfgNode, device: Any) -> InferenceEngine:
    return _engine(cfg, cfg.VAL, device)


def _predict(engine: InferenceEngine, sample: dict, window: SlideWindow | None,
             out_size: tuple[int, int]) -> np.ndarray:
    """Labels of a dataset sample: whole-image multi-scale, or sliding window on ``img_ori``."""
    if window is not None:
        return predict_slide(engine, sample["img_ori"], window).labels
    return engine.predict(sample["img_data"], out_size).labels


def _val_dataset(cfg: CfgNode, start: int = -1, end: int = -1) -> ValDataset:
    return ValDataset(cfg.DATASET.root_dataset, cfg.DATASET.list_val, cfg.DATASET,
                      start_idx=start, end_idx=end)


def _loader(dataset: Any, workers: int) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(dataset, batch_size=1, shuffle=False,
                                       collate_fn=user_scattered_collate,
                                       num_workers=loader_workers(workers))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _evaluate_part(cfg: CfgNode, engine: InferenceEngine, dataset: ValDataset,
                   names: Sequence[str], on_image=None) -> tuple[SegmentationMetrics, float]:
    """Metrics over ``dataset`` (and visualisations named ``names``); total inference seconds."""
    metrics = SegmentationMetrics(cfg.DATASET.num_class)
    colors = class_colors(cfg)
    window = slide_options(cfg.VAL, "VAL")
    seconds = 0.0
    for i, batch in enumerate(_loader(dataset, cfg.VAL.workers)):
        sample = batch[0]
        label = sample["seg_label"][0].numpy()
        _sync(engine.device)
        tic = time.perf_counter()
        pred = _predict(engine, sample, window, label.shape)
        _sync(engine.device)
        seconds += time.perf_counter() - tic
        metrics.update(pred, label)
        if cfg.VAL.visualize:
            row = np.concatenate([sample["img_ori"], colorEncode(label, colors),
                                  colorEncode(pred, colors)], axis=1).astype(np.uint8)
            _save_png(row, os.path.join(cfg.DIR, "result", names[i]))
        if on_image is not None:
            on_image()
    return metrics, seconds


def _report(metrics: SegmentationMetrics, cfg: CfgNode, seconds: float | None,
            stream: TextIO) -> dict[str, Any]:
    names = class_names(cfg)
    summary = metrics.summary(names)
    width = max(len(n) for n in names.values())
    for row in summary["per_class"]:
        acc = "   n/a" if row["accuracy"] is None else f"{row['accuracy'] * 100:6.2f}%"
        print(f"class [{row['index']}] {row['name']:<{width}}  IoU: {row['iou']:.4f}  "
              f"Acc: {acc}", file=stream)
    print("[Eval Summary]:", file=stream)
    line = f"Mean IoU: {metrics.mean_iou:.4f}, Accuracy: {metrics.pixel_accuracy * 100:.2f}%"
    if seconds is not None:
        line += f", Inference Time: {seconds / max(metrics.num_images, 1):.4f}s"
    print(line, file=stream)
    print(f"Mean class accuracy: {metrics.mean_class_accuracy * 100:.2f}%, "
          f"Frequency-weighted IoU: {metrics.frequency_weighted_iou:.4f}", file=stream)
    enc, dec = (os.path.join(cfg.DIR, f"{part}_{cfg.VAL.checkpoint}") for part in ("encoder", "decoder"))
    record = {"checkpoint": cfg.VAL.checkpoint, "encoder": enc, "decoder": dec,
              "list_val": cfg.DATASET.list_val,
              "imgSizes": np.atleast_1d(cfg.DATASET.imgSizes).tolist(),
              "flip": bool(cfg.VAL.flip), "precision": cfg.VAL.precision,
              "backend": cfg.VAL.backend, "mode": cfg.VAL.mode, **summary}
    if seconds is not None:
        record["inference_time_per_image_s"] = seconds / max(metrics.num_images, 1)
    path = results_path(cfg)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(record, fh, indent=2)
    os.replace(tmp, path)
    print(f"Results written to {path}", file=stream)
    return record


def evaluate(cfg: CfgNode, device: Any = "auto", *, progress: bool = True,
             stream: TextIO | None = None) -> dict[str, Any]:
    """Evaluate ``DIR/{encoder,decoder}_<VAL.checkpoint>`` on ``DATASET.list_val`` on
    one device; print the report, write the JSON; return the results dict."""
    stream = stream or sys.stdout
    engine = _val_engine(cfg, device)
    dataset = _val_dataset(cfg)
    names = result_names([s["fpath_img"] for s in dataset.list_sample])
    with tqdm(total=len(dataset), disable=not progress, file=sys.stderr) as bar:
        metrics, seconds = _evaluate_part(cfg, engine, dataset, names, on_image=lambda: bar.update(1))
    return _report(metrics, cfg, seconds, stream)


def validate(cfg: CfgNode, encoder: torch.nn.Module, decoder: torch.nn.Module,
             device: Any, img_sizes: Sequence[int] | None = None) -> dict[str, Any]:
    """Evaluate in-memory ``encoder``/``decoder`` (e.g. during training) on
    ``DATASET.list_val`` at ``img_sizes`` (default: DATASET.imgSizes); nothing is
    written. Leaves both nets in eval mode. Returns the metrics summary with the
    class names and ``time`` (seconds, loading included)."""
    tic = time.perf_counter()
    vcfg = cfg.clone()
    vcfg.defrost()
    vcfg.VAL.visualize = False
    if img_sizes:
        vcfg.DATASET.imgSizes = tuple(int(s) for s in img_sizes)
    engine = InferenceEngine(encoder, decoder, device=device)
    metrics, _ = _evaluate_part(vcfg, engine, _val_dataset(vcfg), [])
    return {**metrics.summary(class_names(cfg)), "time": time.perf_counter() - tic}


def _worker(cfg_yaml: str, device: str, start: int, end: int, threads: int,
            names: list[str], results: Any, rank: int) -> None:
    try:
        tune_allocator()  # a spawned process: the parent's setting is not inherited
        if threads > 0:
            torch.set_num_threads(threads)
        cfg = CfgNode.load_cfg(cfg_yaml)
        engine = _val_engine(cfg, device)
        dataset = _val_dataset(cfg, start, end)
        metrics, seconds = _evaluate_part(cfg, engine, dataset, names,
                                          on_image=lambda: results.put(("image", rank)))
        results.put(("done", rank, metrics.confusion, metrics.num_images, seconds))
    except (CheckpointError, WeightsError, DatasetError) as exc:  # bad input: its one-line message
        results.put(("input_error", rank, exc))
    except BaseException:  # report everything, including KeyboardInterrupt, to the parent
        results.put(("error", rank, traceback.format_exc()))


def evaluate_multiprocess(cfg: CfgNode, devices: Sequence[str], *, progress: bool = True,
                          stream: TextIO | None = None) -> dict[str, Any]:
    """``evaluate`` with the list split over one process per entry of ``devices``
    (``"cuda:N"`` or ``"cpu"``; CPU processes share the cores evenly)."""
    stream = stream or sys.stdout
    if str(cfg.VAL.backend).lower() != "onnxruntime":
        checkpoint_paths(cfg.DIR, cfg.VAL.checkpoint)  # fail before starting processes
    samples = _val_dataset(cfg).list_sample
    names = result_names([s["fpath_img"] for s in samples])
    total = len(samples)
    per = -(-total // len(devices))
    cpu_procs = sum(1 for d in devices if resolve_device(d).type == "cpu")
    threads = max(1, cpu_count() // cpu_procs) if cpu_procs else 0
    ctx = torch.multiprocessing.get_context("spawn")
    results = ctx.Queue()
    procs = {}
    for rank, device in enumerate(devices):
        start, end = rank * per, min(total, (rank + 1) * per)
        if start >= end:
            continue
        print(f"{device}: start_idx {start}, end_idx {end}", file=stream)
        dev_threads = threads if resolve_device(device).type == "cpu" else 0
        proc = ctx.Process(target=_worker, args=(cfg.dump(), str(device), start, end, dev_threads,
                                                 names[start:end], results, rank))
        # not daemonic: each process may start DataLoader workers (VAL.workers)
        proc.start()
        procs[rank] = proc
    merged = SegmentationMetrics(cfg.DATASET.num_class)
    pending = set(procs)
    try:
        with tqdm(total=total, disable=not progress, file=sys.stderr) as bar:
            while pending:
                try:
                    msg = results.get(timeout=1.0)
                except queue_module.Empty:
                    dead = [r for r in pending if procs[r].exitcode not in (None, 0)]
                    if dead:
                        r = dead[0]
                        raise RuntimeError(f"evaluation process {r} ({devices[r]}) died with "
                                           f"exit code {procs[r].exitcode}")
                    continue
                if msg[0] == "image":
                    bar.update(1)
                elif msg[0] == "input_error":
                    raise msg[2]
                elif msg[0] == "error":
                    raise RuntimeError(f"evaluation process {msg[1]} ({devices[msg[1]]}) "
                                       f"failed:\n{msg[2]}")
                else:
                    _, rank, confusion, count, _seconds = msg
                    part = SegmentationMetrics(cfg.DATASET.num_class)
                    part.confusion, part.num_images = np.asarray(confusion), int(count)
                    merged.merge(part)
                    pending.discard(rank)
    finally:
        for proc in procs.values():
            if proc.is_alive() and pending:
                proc.terminate()
            proc.join()
    return _report(merged, cfg, None, stream)


# ============================================================================ test

def list_test_images(spec: str, root_dataset: str = "") -> tuple[list[str], list[str]]:
    """Images named by ``spec`` and their output names (see ``result_names``).

    ``spec``: an image file; a folder (searched recursively for .jpg .jpeg .png
    .bmp .webp .tif .tiff, any case; names relative to the folder); or an
    ``.odgt`` list whose relative ``fpath_img`` are looked up under
    ``root_dataset``, then next to the list (names follow the listed paths).
    """
    if os.path.isdir(spec):
        paths = find_recursive(spec, IMAGE_EXTENSIONS)
        if not paths:
            raise FileNotFoundError(f"--imgs {spec}: no images (.jpg .jpeg .png .bmp .webp .tif) "
                                    f"found in this folder or below")
        return paths, result_names(paths, spec)
    if not os.path.exists(spec):
        raise FileNotFoundError(f"--imgs {spec}: no such file or folder")
    if spec.lower().endswith(".odgt"):
        listed = [rec["fpath_img"] for rec in TestDataset(spec, _NO_RESIZE).list_sample]
        paths = [_resolve_listed(p, root_dataset, os.path.dirname(spec)) for p in listed]
        return paths, result_names(listed)
    return [spec], result_names([spec])


# TestDataset options for reading an odgt list without loading images
_NO_RESIZE = CfgNode({"imgSizes": (1,), "imgMaxSize": 1, "padding_constant": 1})


def _resolve_listed(path: str, *folders: str) -> str:
    if os.path.isabs(path):
        return path
    for folder in folders:
        if os.path.exists(os.path.join(folder, path)):
            return os.path.join(folder, path)
    return os.path.join(folders[0], path)


class _Readable(torch.utils.data.Dataset):
    """TestDataset items, with unreadable images turned into {'error', 'info'} items."""

    def __init__(self, dataset: TestDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        path = self.dataset.list_sample[index]["fpath_img"]
        try:
            return self.dataset[index]
        except DatasetError as exc:
            msg = str(exc)
            return {"error": msg[msg.find(path):] if path in msg else msg, "info": path}


def run_test(cfg: CfgNode, imgs: str, device: Any = "auto", *, progress: bool = True,
             stream: TextIO | None = None, err: TextIO | None = None) -> int:
    """Segment the images named by ``imgs`` (see ``list_test_images``) with
    ``DIR/{encoder,decoder}_<TEST.checkpoint>``; write image | prediction PNGs to
    ``TEST.result`` (input folder structure kept) and print the classes found.
    Returns the number of images skipped as unreadable."""
    stream, err = stream or sys.stdout, err or sys.stderr
    engine = _engine(cfg, cfg.TEST, device)
    window = slide_options(cfg.TEST, "TEST")
    paths, names = list_test_images(imgs, cfg.DATASET.root_dataset)
    out_dir = cfg.TEST.result
    inputs = {os.path.abspath(p) for p in paths}
    outputs = []
    for name in names:
        out = os.path.join(out_dir, name)
        if os.path.abspath(out) in inputs:  # never overwrite an input image
            out = os.path.splitext(out)[0] + "_seg.png"
        outputs.append(out)
    colors = class_colors(cfg)
    class_name = class_names(cfg)
    dataset = _Readable(TestDataset([{"fpath_img": p} for p in paths], cfg.DATASET))
    skipped = 0
    with tqdm(total=len(paths), disable=not progress, file=err) as bar:
        for i, batch in enumerate(_loader(dataset, cfg.TEST.workers)):
            sample = batch[0]
            if "error" in sample:
                skipped += 1
                bar.write(f"Skipping unreadable image {sample['error']}", file=err)
                bar.update(1)
                continue
            labels = _predict(engine, sample, window, sample["img_ori"].shape[:2])
            print(f"Predictions in [{sample['info']}]:", file=stream)
            for share in describe_labels(labels, class_name, min_percent=0.1):
                print(f"  {share.name}: {share.percent:.2f}%", file=stream)
            row = np.concatenate([sample["img_ori"], colorEncode(labels, colors)],
                                 axis=1).astype(np.uint8)
            _save_png(row, outputs[i])
            bar.update(1)
    done = len(paths) - skipped
    print(f"Inference done! {done} image(s) written to {out_dir}"
          + (f", {skipped} unreadable skipped" if skipped else ""), file=stream)
    return skipped


# ============================================================================ CLI bodies

def _load(cfg_file: str, opts: Sequence[str]) -> CfgNode:
    from .config import load_cfg
    from .utils import setup_logger
    cfg = load_cfg(cfg_file, opts)
    logger = setup_logger(distributed_rank=0, filename=None)
    logger.info("Loaded configuration file %s", cfg_file)
    logger.info("Running with config:\n%s", cfg)
    return cfg


def _run(body) -> int:
    """The command-line mains' common part: tuned allocator, input errors as one line."""
    from .config import ConfigError
    tune_allocator()
    try:
        body()
    except (CheckpointNotFoundError, CheckpointError, ConfigError, DatasetError,
            DeviceUnavailableError, FileNotFoundError, WeightsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def eval_main(cfg_file: str, opts: Sequence[str], gpu: str = "auto") -> int:
    """eval.py: returns the process exit code."""
    def body():
        cfg = _load(cfg_file, opts)
        evaluate(cfg, resolve_device(gpu))
        print("Evaluation Done!")
    return _run(body)


def eval_multipro_main(cfg_file: str, opts: Sequence[str], gpus: str, workers: int) -> int:
    """eval_multipro.py: ``gpus`` like "0-3" or "cpu" (then ``workers`` processes)."""
    from .utils import parse_devices

    def body():
        cfg = _load(cfg_file, opts)
        found = parse_devices(gpus)
        if found == ["cpu"]:
            devices = ["cpu"] * max(1, int(workers))
        else:
            devices = [f"cuda:{d[3:]}" if d.startswith("gpu") else d for d in found]
            for d in devices:
                resolve_device(d)  # clear error if the GPU does not exist
        evaluate_multiprocess(cfg, devices)
        print("Evaluation Done!")
    return _run(body)


def test_main(imgs: str, cfg_file: str, opts: Sequence[str], gpu: str = "auto") -> int:
    """test.py: exit code 0 even when some images were unreadable (they are reported)."""
    def body():
        cfg = _load(cfg_file, opts)
        run_test(cfg, imgs, resolve_device(gpu))
    return _run(body)
