"""``VAL.visualize``: image | ground truth | prediction PNGs, one per image."""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from ...data.classes import colorEncode
from ...data.io import write_png
from ..loop import Consumer, EvalSample

__all__ = ["VisualizationWriter"]


class VisualizationWriter(Consumer):
    """Writes ``folder/names[sample.index]`` per image: the photo, the ground truth
    and the prediction side by side, labels coloured with ``colors`` (Kx3 uint8).
    ``names``: one output name per image of the whole list (``data.naming.
    result_names``). ``result()``: the paths written, in order."""

    def __init__(self, folder: str, names: Sequence[str], colors: np.ndarray) -> None:
        self.folder, self.names, self.colors = folder, list(names), colors
        self.reset()

    def reset(self) -> None:
        self.written: list[str] = []

    def process(self, sample: EvalSample, prediction: np.ndarray) -> None:
        row = np.concatenate([sample.image, colorEncode(sample.label, self.colors),
                              colorEncode(prediction, self.colors)], axis=1).astype(np.uint8)
        path = os.path.join(self.folder, self.names[sample.index])
        write_png(row, path)
        self.written.append(path)

    def result(self) -> list[str]:
        return self.written
