"""Prediction: segment a file, a folder (recursively) or an odgt list and write
image | prediction PNGs (test.py).

Images are listed here (``list_test_images``) and named by ``data.naming``
(``result_names``, ``companion_names``; both re-exported here), predicted by the
engine (:mod:`mit_semseg.inference`) in the mode ``TEST.mode`` says, coloured
with the class table and written as PNGs; unreadable images are reported and
skipped.

A photo that takes more than ``STEP_BAR_DELAY_S`` seconds also gets a bar of
its own steps under the image bar (tiles in sliding-window mode; network runs
and the fusion in whole-image mode; see ``inference.engine``'s progress).

Beside each ``NAME.png``, on request: ``NAME_confidence.png`` (``TEST.confidence``:
the probability of each pixel's predicted class, 8-bit grayscale, value
``round(255 p)``, ``data.io.confidence_uint8``) and ``NAME_probs.npz``
(``TEST.save_probs``: key ``probs``, the averaged class probabilities as
``[num_class, H, W]`` float16 at the photo's size; ``data.io.write_probs``) and
``NAME_labels.png`` + ``NAME_labels.json`` (``TEST.save_labels``: the label map in
the dataset's convention with the class table's palette, and the classes present
with their pixel shares; ``data.labelmap``).
"""
from __future__ import annotations

import os
import sys
from typing import Any, TextIO

import numpy as np
import torch
from tqdm import tqdm
from yacs.config import CfgNode

from .data.classes import class_table, colorEncode
from .data.datasets import TestDataset, inference_loader
from .data.io import (IMAGE_EXTENSIONS, DatasetError, confidence_uint8, find_recursive, write_png,
                      write_probs)
from .data.labelmap import class_shares, label_convention, write_class_shares, write_label_map
from .data.naming import companion_names, result_names
from .errors import InputNotFoundError
from .inference.engine import engine_from_config
from .inference.segmenter import describe_labels

__all__ = ["run_test", "result_names", "list_test_images", "companion_names",
           "STEP_BAR_DELAY_S"]

# a photo's own bar of steps appears once it has run this long (none for quick photos)
STEP_BAR_DELAY_S = 5.0


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
            raise InputNotFoundError(f"--imgs {spec}: no images (.jpg .jpeg .png .bmp .webp .tif) "
                                    f"found in this folder or below")
        return paths, result_names(paths, spec)
    if not os.path.exists(spec):
        raise InputNotFoundError(f"--imgs {spec}: no such file or folder")
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


class _LabelMapWriter:
    """Writes a prediction's label map (``TEST.save_labels``) and its class shares
    (the same path with ``.json``), in the dataset's convention and colours."""

    def __init__(self, cfg: CfgNode, num_class: int, table: Any) -> None:
        self.num_class, self.names, self.colors = num_class, table.names, table.colors
        self.convention = label_convention(cfg)
        self.ignore = int(cfg.DATASET.get("ignore_label", 255))
        unlabeled = table.unlabeled_colors
        self.unlabeled = tuple(unlabeled[0]) if len(unlabeled) else (0, 0, 0)

    def __call__(self, labels: np.ndarray, path: str) -> None:
        write_label_map(path, labels, self.num_class, self.colors, convention=self.convention,
                        ignore_label=self.ignore, unlabeled_color=self.unlabeled)
        write_class_shares(os.path.splitext(path)[0] + ".json",
                           class_shares(labels, self.names, self.colors,
                                        convention=self.convention, ignore_label=self.ignore))


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


class _StepBar:
    """``progress(done, total)`` of one photo, shown as a second bar under the image
    bar once the photo has taken ``delay`` seconds; removed when the photo is done."""

    def __init__(self, unit: str, file: TextIO, delay: float | None = None,
                 disable: bool = False) -> None:
        self.unit, self.file, self.disable = unit, file, disable
        self.delay = STEP_BAR_DELAY_S if delay is None else delay
        self.bar: tqdm | None = None

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None:
            self.bar = tqdm(total=total, desc=f"  {self.unit}s", unit=self.unit, position=1,
                            leave=False, delay=self.delay, file=self.file, disable=self.disable)
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def run_test(cfg: CfgNode, imgs: str, device: Any = "auto", *, progress: bool = True,
             stream: TextIO | None = None, err: TextIO | None = None) -> int:
    """Segment the images named by ``imgs`` (see ``list_test_images``) with
    ``DIR/{encoder,decoder}_<TEST.checkpoint>``; write image | prediction PNGs to
    ``TEST.result`` (input folder structure kept), with ``TEST.confidence`` /
    ``TEST.save_probs`` / ``TEST.save_labels`` also the confidence PNGs /
    probability files / label maps and their class-share JSON beside them, and
    print the classes found. Returns the number of images skipped as
    unreadable."""
    stream, err = stream or sys.stdout, err or sys.stderr
    engine = engine_from_config(cfg, "TEST", device)
    paths, names = list_test_images(imgs, cfg.DATASET.root_dataset)
    out_dir = cfg.TEST.result
    inputs = {os.path.abspath(p) for p in paths}
    outputs = []
    for name in names:
        out = os.path.join(out_dir, name)
        if os.path.abspath(out) in inputs:  # never overwrite an input image
            out = os.path.splitext(out)[0] + "_seg.png"
        outputs.append(out)
    want_conf, want_probs = bool(cfg.TEST.confidence), bool(cfg.TEST.save_probs)
    taken = inputs | {os.path.abspath(p) for p in outputs}
    conf_paths = companion_names(outputs, "_confidence.png", taken) if want_conf else []
    prob_paths = companion_names(outputs, "_probs.npz", taken) if want_probs else []
    label_paths = companion_names(outputs, "_labels.png", taken) if cfg.TEST.save_labels else []
    steps = _StepBar("tile" if engine.mode == "slide" else "step", err, disable=not progress)
    dataset = _Readable(TestDataset([{"fpath_img": p} for p in paths], cfg.DATASET))
    table = engine.classes or class_table(cfg)  # the model file's own, when it decides
    colors, class_name = table.colors, table.name_dict()
    label_map = _LabelMapWriter(cfg, engine.num_class, table)
    skipped = 0
    with tqdm(total=len(paths), disable=not progress, file=err) as bar:
        for i, batch in enumerate(inference_loader(dataset, cfg.TEST.workers)):
            sample = batch[0]
            if "error" in sample:
                skipped += 1
                bar.write(f"Skipping unreadable image {sample['error']}", file=err)
                bar.update(1)
                continue
            try:
                pred = engine.predict_sample(sample, want_probs, return_confidence=want_conf,
                                             progress=steps)
            finally:
                steps.close()
            labels = pred.labels
            print(f"Predictions in [{sample['info']}]:", file=stream)
            for share in describe_labels(labels, class_name, min_percent=0.1):
                print(f"  {share.name}: {share.percent:.2f}%", file=stream)
            row = np.concatenate([sample["img_ori"], colorEncode(labels, colors)],
                                 axis=1).astype(np.uint8)
            write_png(row, outputs[i])
            if want_conf:
                write_png(confidence_uint8(pred.confidence), conf_paths[i])
            if want_probs:
                write_probs(pred.probs, prob_paths[i])
            if label_paths:
                label_map(labels, label_paths[i])
            bar.update(1)
    done = len(paths) - skipped
    print(f"Inference done! {done} image(s) written to {out_dir}"
          + (f", {skipped} unreadable skipped" if skipped else ""), file=stream)
    return skipped
