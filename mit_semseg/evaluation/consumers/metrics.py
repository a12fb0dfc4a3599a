"""The metrics of an evaluation pass: one ``SegmentationMetrics`` accumulator."""
from __future__ import annotations

import numpy as np

from ..loop import Consumer, EvalSample
from ..metrics import SegmentationMetrics

__all__ = ["MetricsConsumer", "IMAGE_STATS"]

# the key of an image's ImageStats in EvalSample.shared (offered with per_image)
IMAGE_STATS = "image_stats"


class MetricsConsumer(Consumer):
    """Sums every image into a ``num_class`` confusion matrix. ``per_image``: also
    keeps each image's statistics (``ImageStats``, named by the sample's name) and
    the images per class; ``boundary``: also boundary IoU (implies ``per_image``).
    ``result()``: the ``SegmentationMetrics`` (mergeable with another process's).
    With ``per_image``, each image's ``ImageStats`` is offered to the consumers
    after this one as ``sample.shared[IMAGE_STATS]``."""

    def __init__(self, num_class: int, *, per_image: bool = False,
                 boundary: bool = False) -> None:
        self.num_class, self.per_image, self.boundary = int(num_class), per_image, boundary
        self.reset()

    def reset(self) -> None:
        self.metrics = SegmentationMetrics(self.num_class, per_image=self.per_image,
                                           boundary=self.boundary)

    def process(self, sample: EvalSample, prediction: np.ndarray) -> None:
        self.metrics.update(prediction, sample.label, name=sample.name)
        if self.metrics.per_image:
            sample.shared[IMAGE_STATS] = self.metrics.images[-1]

    def result(self) -> SegmentationMetrics:
        return self.metrics
