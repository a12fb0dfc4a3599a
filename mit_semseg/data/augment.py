"""Training augmentation pipelines beside the original's (``DATASET.augment``).

``original`` (default) is ``TrainDataset.make_batch``: batches of one orientation
rescaled to a short side drawn from ``imgSizes``, random flip. ``mmseg`` is
mmsegmentation's standard pipeline for ADE20K (``RandomResize`` with
``ratio_range``, ``RandomCrop`` with ``cat_max_ratio``, ``RandomFlip``,
``PhotoMetricDistortion``, ``Pad``), written here from its documented behaviour:

1. resize: a ratio ``r`` is drawn uniformly from ``DATASET.augment_ratio`` (0.5-2.0);
   the image is resized, keeping its aspect ratio, to the largest size that fits
   inside ``r * DATASET.augment_scale`` (long side, short side; 2048 x 512), sides
   rounded to the nearest pixel; bilinear for the image, nearest for the labels;
2. crop: a window of ``DATASET.crop_size`` (or the whole side where the image is
   smaller) at a uniformly drawn offset; while one class covers
   ``DATASET.cat_max_ratio`` (0.75) or more of the window's labeled pixels, or the
   window holds a single class, another offset is drawn, up to 10 times;
3. flip: horizontal with probability 1/2 (when ``DATASET.random_flip``);
4. photometric distortion, each step with probability 1/2, on 8-bit values clipped
   and truncated after each step: brightness (add a value from [-32, 32)), contrast
   (multiply by a value from [0.5, 1.5)) either now or as the last step (a coin
   decides), saturation (HSV saturation times [0.5, 1.5)), hue (turned by 2k
   degrees, k an integer from [-18, 18): mmseg's shift in OpenCV's 8-bit hue units);
5. pad: the batch is ``crop_size`` rounded up to ``DATASET.padding_constant``; the
   padding is image value 0 (after normalisation, as the original's batches) and
   unlabeled (ignored by the loss) labels.

Labels are then downsampled by ``DATASET.segm_downsampling_rate`` as the original's
batches are. Every draw comes from the dataset's stream generator
(``TrainDataset``: seeded from ``TRAIN.seed``, rank, worker and the stream
segment), in a fixed order per image, so runs are reproducible and resume
exactly. Unlike mmsegmentation (OpenCV), resizing and the HSV conversion use PIL
(hue in steps of 1.4 degrees instead of 2), and saturation and hue share one trip
through HSV (mmseg rounds to RGB between them), so pixels can differ by rounding.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from ..config.schema import AUGMENTS
from .transforms import imresize, normalize, round2nearest_multiple

__all__ = ["AUGMENTS", "MMSegAugment", "make_augment", "resize_labels", "shift_saturation_hue",
           "photometric_distortion"]

def resize_labels(labels: np.ndarray, width: int, height: int) -> np.ndarray:
    """Nearest-neighbour resize through PIL (the original's label resampling)."""
    if labels.shape == (height, width):
        return labels
    # uint8 maps become mode "L", wider ones mode "I" (int32).
    dtype = np.uint8 if labels.dtype == np.uint8 else np.int32
    img = Image.fromarray(np.ascontiguousarray(labels, dtype=dtype))
    return np.asarray(imresize(img, (width, height), "nearest"))


# ----------------------------------------------------------------------------- colour

def _affine(values: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
    """``values * alpha + beta`` in float32, clipped to 0..255 and truncated to uint8."""
    return np.clip(values.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)


def shift_saturation_hue(img: np.ndarray, saturation: float = 1.0, hue_degrees: float = 0.0
                         ) -> np.ndarray:
    """uint8 RGB with the HSV saturation times ``saturation`` (clipped, truncated) and the
    hue turned by ``hue_degrees``; HSV through PIL (hue in steps of 360/256 degrees)."""
    h, s, v = (np.asarray(c) for c in Image.fromarray(img, "RGB").convert("HSV").split())
    if saturation != 1.0:
        s = _affine(s, alpha=saturation)
    if hue_degrees:
        h = ((h.astype(np.int64) + int(round(hue_degrees * 256.0 / 360.0))) % 256).astype(np.uint8)
    hsv = Image.merge("HSV", [Image.fromarray(c, "L") for c in (h, s, v)])
    return np.asarray(hsv.convert("RGB"))


def photometric_distortion(img: np.ndarray, rng: np.random.Generator,
                           brightness: float = 32, contrast: Sequence[float] = (0.5, 1.5),
                           saturation: Sequence[float] = (0.5, 1.5), hue: int = 18) -> np.ndarray:
    """mmsegmentation's PhotoMetricDistortion on a uint8 RGB array (see the module
    docstring); draws from ``rng`` in this order: brightness coin (and value), mode,
    [contrast], saturation coin (and factor), hue coin (and shift), [contrast]."""
    def contrast_step(x: np.ndarray) -> np.ndarray:
        if rng.integers(2):
            return _affine(x, alpha=float(rng.uniform(contrast[0], contrast[1])))
        return x

    if rng.integers(2):
        img = _affine(img, beta=float(rng.uniform(-brightness, brightness)))
    contrast_first = bool(rng.integers(2))
    if contrast_first:
        img = contrast_step(img)
    factor = float(rng.uniform(saturation[0], saturation[1])) if rng.integers(2) else 1.0
    # mmseg's hue unit is OpenCV's 8-bit hue: 2 degrees
    degrees = 2.0 * int(rng.integers(-hue, hue)) if rng.integers(2) else 0.0
    if factor != 1.0 or degrees:
        img = shift_saturation_hue(img, factor, degrees)
    if not contrast_first:
        img = contrast_step(img)
    return img


# ----------------------------------------------------------------------------- the pipeline

@dataclass(frozen=True)
class MMSegAugment:
    """mmsegmentation's training pipeline (see the module docstring). ``scale``: (long,
    short) base size; ``ratio``: (low, high); ``crop``: (height, width)."""

    scale: tuple[int, int] = (2048, 512)
    ratio: tuple[float, float] = (0.5, 2.0)
    crop: tuple[int, int] = (512, 512)
    cat_max_ratio: float = 0.75
    flip: bool = True

    @classmethod
    def from_config(cls, opt: Any) -> "MMSegAugment":
        """From a ``cfg.DATASET`` node."""
        return cls(tuple(int(v) for v in opt.augment_scale),  # type: ignore[arg-type]
                   tuple(float(v) for v in opt.augment_ratio),  # type: ignore[arg-type]
                   tuple(int(v) for v in opt.crop_size),  # type: ignore[arg-type]
                   float(opt.cat_max_ratio), bool(getattr(opt, "random_flip", True)))

    def resized_size(self, height: int, width: int, ratio: float) -> tuple[int, int]:
        """(height, width) of an image resized for ``ratio``."""
        target = (int(self.scale[0] * ratio), int(self.scale[1] * ratio))
        factor = min(max(target) / max(height, width), min(target) / min(height, width))
        return max(1, int(height * factor + 0.5)), max(1, int(width * factor + 0.5))

    def crop_box(self, labels: np.ndarray, rng: np.random.Generator) -> tuple[int, int, int, int]:
        """(top, left, bottom, right) of the crop of ``labels`` (0 = unlabeled)."""
        height, width = labels.shape
        ch, cw = self.crop

        def draw() -> tuple[int, int, int, int]:
            top = int(rng.integers(0, max(height - ch, 0) + 1))
            left = int(rng.integers(0, max(width - cw, 0) + 1))
            return top, left, min(top + ch, height), min(left + cw, width)

        box = draw()
        if self.cat_max_ratio < 1.0:
            for _ in range(10):
                window = labels[box[0]:box[2], box[1]:box[3]]
                counts = np.bincount(window.ravel().astype(np.int64))[1:]
                counts = counts[counts > 0]
                if len(counts) > 1 and counts.max() / counts.sum() < self.cat_max_ratio:
                    break
                box = draw()
        return box

    def sample(self, img: Image.Image, labels: np.ndarray, rng: np.random.Generator
               ) -> tuple[np.ndarray, np.ndarray]:
        """One training sample: (uint8 RGB ``[h, w, 3]``, labels ``[h, w]`` in the
        annotation's values, 0 unlabeled) with ``h, w`` at most ``crop``."""
        ratio = float(rng.uniform(self.ratio[0], self.ratio[1]))
        h, w = self.resized_size(img.size[1], img.size[0], ratio)
        img = imresize(img, (w, h), "bilinear")
        labels = resize_labels(labels, w, h)
        top, left, bottom, right = self.crop_box(labels, rng)
        image = np.asarray(img, dtype=np.uint8)[top:bottom, left:right]
        labels = labels[top:bottom, left:right]
        if self.flip and rng.random() < 0.5:
            image, labels = image[:, ::-1], labels[:, ::-1]
        image = photometric_distortion(np.ascontiguousarray(image), rng)
        return image, np.ascontiguousarray(labels)

    def batch(self, dataset: Any, group: Sequence[int], rng: np.random.Generator
              ) -> dict[str, torch.Tensor]:
        """The batch of samples ``group`` of ``dataset`` (a ``TrainDataset``): images
        ``[B, 3, H, W]`` with ``H, W`` the crop size rounded up to the padding
        constant, labels downsampled by ``segm_downsampling_rate`` (-1 = ignored)."""
        p, r = dataset.padding_constant, dataset.segm_downsampling_rate
        height, width = (round2nearest_multiple(c, p) for c in self.crop)
        images = torch.zeros(len(group), 3, height, width)
        labels = torch.full((len(group), height // r, width // r), -1, dtype=torch.int64)
        for k, index in enumerate(group):
            img, segm = dataset.read_pair(index)
            image, seg = self.sample(img, segm, rng)
            h, w = seg.shape
            images[k, :, :h, :w] = normalize(image)
            small = dataset.downsample_labels(seg)
            sh, sw = min(small.shape[0], labels.shape[1]), min(small.shape[1], labels.shape[2])
            labels[k, :sh, :sw] = small[:sh, :sw]
        return {"img_data": images, "seg_label": labels}


def make_augment(opt: Any) -> MMSegAugment | None:
    """The pipeline ``DATASET.augment`` names (``opt``: the DATASET node); None for
    "original" (``TrainDataset``'s own batches)."""
    name = str(getattr(opt, "augment", "original")).lower()
    if name == "original":
        return None
    if name == "mmseg":
        return MMSegAugment.from_config(opt)
    raise ValueError(f"DATASET.augment {name!r} is not one of {list(AUGMENTS)}")
