"""The one evaluation loop: the engine runs over a dataset once and every
prediction goes to a list of consumers.

A consumer (``Consumer``) sees each evaluated image once, in list order:
``reset()`` before the first, ``process(sample, prediction)`` per image and
``result()`` after the last. What consumers exist (metrics, worst-image
panels, visualisations, progress) is the caller's choice; the loop knows none
of them, so a new consumer is a new class passed in the list.

The loop measures inference time only (``InferenceEngine.predict_sample``,
CUDA synchronised around it); what the consumers do is not counted.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..data.datasets import inference_loader
from ..inference.engine import InferenceEngine

__all__ = ["EvalSample", "Consumer", "OnSample", "run_evaluation"]


@dataclass
class EvalSample:
    """One validation image as the consumers see it.

    ``index``: its position in the whole validation list (a process evaluating
    a part of the list counts from the part's start); ``name``: the dataset's
    ``info`` (the image path as listed); ``image``: the photo, HxWx3 uint8;
    ``label``: HxW int64 ground truth, 0-based, negative = unlabeled.
    ``shared``: what a consumer computed for this image and offers to the
    consumers after it in the list (e.g. ``"image_stats"``), so that none
    computes it twice; a consumer must work without it.
    """

    index: int
    name: str
    image: np.ndarray
    label: np.ndarray
    shared: dict[str, Any] = field(default_factory=dict)


class Consumer:
    """Takes every (sample, prediction) of one evaluation pass.

    Subclasses override ``process`` and usually ``reset`` and ``result``.
    ``prediction`` is the HxW int64 array of predicted 0-based classes, the
    size of ``sample.label``. Consumers must not modify either array; they may
    add to ``sample.shared``.
    """

    def reset(self) -> None:
        """Forget what earlier passes gave (called before each pass)."""

    def process(self, sample: EvalSample, prediction: np.ndarray) -> None:
        """Take one image's prediction."""
        raise NotImplementedError

    def result(self) -> Any:
        """What the pass produced (None by default)."""
        return None


class OnSample(Consumer):
    """Calls ``callback()`` after each image (e.g. to advance a progress bar)."""

    def __init__(self, callback: Callable[[], Any]) -> None:
        self.callback = callback

    def process(self, sample: EvalSample, prediction: np.ndarray) -> None:
        self.callback()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_evaluation(engine: InferenceEngine, dataset: torch.utils.data.Dataset,
                   consumers: Sequence[Consumer], *, workers: int = 0,
                   first: int = 0) -> float:
    """Predict every item of ``dataset`` (a ``ValDataset``) in order and hand each
    prediction to every consumer, in the order given; returns the inference
    seconds summed over the images. ``first``: the index in the whole list of
    the dataset's first item; ``workers``: DataLoader processes (capped by the
    CPU count)."""
    for consumer in consumers:
        consumer.reset()
    seconds = 0.0
    for i, batch in enumerate(inference_loader(dataset, workers)):
        item = batch[0]
        _sync(engine.device)
        tic = time.perf_counter()
        labels = engine.predict_sample(item).labels
        _sync(engine.device)
        seconds += time.perf_counter() - tic
        sample = EvalSample(index=first + i, name=item["info"], image=item["img_ori"],
                            label=item["seg_label"][0].numpy())
        for consumer in consumers:
            consumer.process(sample, labels)
    return seconds
