"""Evaluation of a checkpoint on ``DATASET.list_val``.

* ``evaluate(cfg, device)``: one process.
* ``evaluate_multiprocess(cfg, devices)``: the list split into contiguous
  parts, one process per device (GPUs, or CPU processes); their confusion
  matrices are summed, so the numbers equal ``evaluate``'s exactly.
* ``validate(cfg, encoder, decoder, device)``: in-memory networks, during
  training; nothing written.

All three run the one loop (``loop.run_evaluation``): the engine
(:mod:`mit_semseg.inference`) predicts each sample in the mode ``VAL.mode``
says and hands it to the consumers (``consumers``) chosen here; ``report``
prints and writes the results: the JSON and the report page.

``evaluate`` and ``evaluate_multiprocess`` feed the metrics with per-image
results (and boundary IoU with ``VAL.boundary_iou``), the panels of the
``VAL.worst_images`` images of lowest mIoU and, with ``VAL.visualize``, the
image | ground truth | prediction PNGs in ``DIR/result/``. Each process builds
the panels of its own worst images while it has them in memory and sends them
with its metrics; the parent merges the metrics and keeps the worst panels
over all processes, so the report equals one process's. ``validate`` feeds
the confusion matrix only.
"""
from __future__ import annotations

import os
import queue as queue_module
import sys
import time
import traceback
from typing import Any, Sequence, TextIO

import torch
from tqdm import tqdm
from yacs.config import CfgNode

from ..checkpoints.files import checkpoint_paths
from ..data.classes import class_colors, class_names, class_table
from ..data.datasets import ValDataset
from ..data.naming import result_names
from ..data.transforms import Preprocess
from ..errors import MitSemsegError
from ..inference.engine import InferenceEngine, engine_from_config
from ..runtime.devices import resolve_device
from ..runtime.process import cpu_count, tune_allocator
from .consumers import MetricsConsumer, VisualizationWriter, WorstImagesConsumer
from .loop import Consumer, OnSample, run_evaluation
from .metrics import SegmentationMetrics
from .panels import WorstPanels
from .report import write_report

__all__ = ["evaluate", "validate", "evaluate_multiprocess"]


def _val_engine(cfg: CfgNode, device: Any) -> InferenceEngine:
    return engine_from_config(cfg, "VAL", device)


def _ran(engine: InferenceEngine) -> dict[str, str]:
    """What the engine measured with: its backend and precision (an int8 file's "int8"),
    and the ONNX file it ran, if any."""
    ran = {"backend": getattr(engine.backend, "name", "custom"), "precision": engine.precision}
    if getattr(engine.backend, "path", None):
        ran["onnx"] = str(engine.backend.path)
    return ran


def _val_dataset(cfg: CfgNode, start: int = -1, end: int = -1) -> ValDataset:
    return ValDataset(cfg.DATASET.root_dataset, cfg.DATASET.list_val, cfg.DATASET,
                      start_idx=start, end_idx=end)


def _report_part(cfg: CfgNode, engine: InferenceEngine, dataset: ValDataset,
                 names: Sequence[str], colors: Any, extra: Sequence[Consumer] = (), *,
                 first: int = 0) -> tuple[SegmentationMetrics, WorstPanels, float]:
    """One pass of what eval reports over ``dataset`` (items ``first``... of the
    list): metrics with per-image results (and boundary IoU with
    ``VAL.boundary_iou``), the ``VAL.worst_images`` panels and, with
    ``VAL.visualize``, the PNGs named ``names`` (the whole list's) in the class
    ``colors`` under ``DIR/result``; ``extra`` consumers too. Returns the metrics,
    the panels and the inference seconds."""
    k = cfg.DATASET.num_class
    metrics = MetricsConsumer(k, per_image=True, boundary=bool(cfg.VAL.boundary_iou))
    worst = WorstImagesConsumer(int(cfg.VAL.worst_images), k, colors)
    consumers: list[Consumer] = [metrics, worst]
    if cfg.VAL.visualize:
        consumers.append(VisualizationWriter(os.path.join(cfg.DIR, "result"), names, colors))
    seconds = run_evaluation(engine, dataset, [*consumers, *extra], workers=cfg.VAL.workers,
                             first=first)
    return metrics.result(), worst.result(), seconds


def evaluate(cfg: CfgNode, device: Any = "auto", *, progress: bool = True,
             stream: TextIO | None = None) -> dict[str, Any]:
    """Evaluate ``DIR/{encoder,decoder}_<VAL.checkpoint>`` on ``DATASET.list_val`` on
    one device; print the report, write the JSON; return the results dict."""
    stream = stream or sys.stdout
    engine = _val_engine(cfg, device)
    # what the data layer says about the list, read once, before the loop
    dataset = _val_dataset(cfg)
    names = result_names([s["fpath_img"] for s in dataset.list_sample])
    table = class_table(cfg)
    with tqdm(total=len(dataset), disable=not progress, file=sys.stderr) as bar:
        metrics, worst, seconds = _report_part(cfg, engine, dataset, names, table.colors,
                                               [OnSample(lambda: bar.update(1))])
    return write_report(metrics, cfg, seconds, stream, panels=worst.panels(),
                        names=table.name_dict(), ran=_ran(engine))


def validate(cfg: CfgNode, network: torch.nn.Module, device: Any,
             img_sizes: Sequence[int] | None = None) -> dict[str, Any]:
    """Evaluate an in-memory ``SegmentationNetwork`` (e.g. during training) on
    ``DATASET.list_val`` at ``img_sizes`` (default: DATASET.imgSizes); nothing is
    written. Leaves the network in eval mode. Returns the metrics summary with the
    class names and ``time`` (seconds, loading included)."""
    tic = time.perf_counter()
    vcfg = cfg.clone()
    vcfg.defrost()
    if img_sizes:
        vcfg.DATASET.imgSizes = tuple(int(s) for s in img_sizes)
    engine = InferenceEngine(network, device=device,
                             preprocess=Preprocess.from_config(vcfg.DATASET))
    metrics = MetricsConsumer(cfg.DATASET.num_class)
    run_evaluation(engine, _val_dataset(vcfg), [metrics], workers=cfg.VAL.workers)
    return {**metrics.result().summary(class_names(cfg)), "time": time.perf_counter() - tic}


def _worker(cfg_yaml: str, device: str, start: int, end: int, threads: int,
            names: list[str], results: Any, rank: int) -> None:
    try:
        tune_allocator()  # a spawned process: the parent's setting is not inherited
        if threads > 0:
            torch.set_num_threads(threads)
        cfg = CfgNode.load_cfg(cfg_yaml)
        engine = _val_engine(cfg, device)
        dataset = _val_dataset(cfg, start, end)
        metrics, worst, seconds = _report_part(cfg, engine, dataset, names, class_colors(cfg),
                                               [OnSample(lambda: results.put(("image", rank)))],
                                               first=start)
        results.put(("done", rank, metrics, worst, seconds, _ran(engine)))
    except MitSemsegError as exc:  # bad input: its one-line message
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
                                                 names, results, rank))
        # not daemonic: each process may start DataLoader workers (VAL.workers)
        proc.start()
        procs[rank] = proc
    parts: dict[int, tuple[SegmentationMetrics, WorstPanels]] = {}
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
                    _, rank, part, worst, _seconds, ran = msg
                    parts[rank] = (part, worst)
                    pending.discard(rank)
    finally:
        for proc in procs.values():
            if proc.is_alive() and pending:
                proc.terminate()
            proc.join()
    # in list order: per-image results as one process lists them
    metrics, worst = parts[min(parts)]
    for rank in sorted(parts)[1:]:
        metrics.merge(parts[rank][0])
        worst.merge(parts[rank][1])
    return write_report(metrics, cfg, None, stream, panels=worst.panels(),
                        names=class_names(cfg), ran=ran)
