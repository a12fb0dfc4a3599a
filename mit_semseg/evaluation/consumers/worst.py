"""The worst images of an evaluation pass, as report panels."""
from __future__ import annotations

import numpy as np

from ..loop import Consumer, EvalSample
from ..metrics import image_stats
from ..panels import WorstPanels
from .metrics import IMAGE_STATS

__all__ = ["WorstImagesConsumer"]


class WorstImagesConsumer(Consumer):
    """Keeps the panels of the ``n`` images of lowest mIoU (over the classes present
    in each image, ``image_stats``; taken from ``sample.shared`` when a metrics
    consumer before this one offers it), ranked by (mIoU, index in the list).
    ``colors``: Kx3 uint8 class colours of the tiles. ``result()``: the
    ``WorstPanels`` (mergeable with another process's)."""

    def __init__(self, n: int, num_class: int, colors: np.ndarray, *,
                 max_side: int = 160) -> None:
        self.n, self.num_class, self.colors, self.max_side = n, int(num_class), colors, max_side
        self.reset()

    def reset(self) -> None:
        self.panels = WorstPanels(self.n, self.colors, max_side=self.max_side)

    def process(self, sample: EvalSample, prediction: np.ndarray) -> None:
        if self.panels.n <= 0:
            return
        stats = sample.shared.get(IMAGE_STATS)
        if stats is None:
            stats = image_stats(prediction, sample.label, self.num_class)
        self.panels.offer(stats.mean_iou, sample.name, sample.image, sample.label, prediction,
                          order=sample.index)

    def result(self) -> WorstPanels:
        return self.panels
