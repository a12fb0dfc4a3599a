"""Small synthetic scene-parsing data set for demos and tests.

Each image is a little "scene": an upper and a lower background region split
by a wavy horizon, plus a few foreground shapes (ellipses, rectangles, bars,
triangles). Every class has its own colour and texture, so a small CNN can
learn it in a few hundred iterations. Object outlines (1 px) and occasional
"clutter" blobs are left unlabeled (annotation 0), like ADE20K's unlabeled
pixels.

Layout written under ``root`` (ADE20K style, paths in the odgt files are
relative to ``root``)::

    images/{training,validation}/scene_00000.jpg
    annotations/{training,validation}/scene_00000.png   (L mode, 0 = unlabeled)
    training.odgt  validation.odgt                        (fpath_img, fpath_segm, width, height)
    classes.csv                                           (class table: Idx,Name,R,G,B)

Output is a pure function of the arguments: image i of a split depends only
on (seed, split, i). CLI: ``python -m mit_semseg synthetic --root data/synthetic``.
"""
from __future__ import annotations

import json
import os
from typing import Callable, Sequence

import numpy as np
from PIL import Image

__all__ = ["CLASS_NAMES", "CLASS_COLORS", "MAX_CLASSES", "make_synthetic_dataset", "make_scene"]

Texture = Callable[[np.random.Generator, int, int], np.ndarray]


def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:h, 0:w]
    return yy.astype(np.float32), xx.astype(np.float32)


def _jitter(rng: np.random.Generator, rgb: Sequence[float], amount: float = 12.0) -> np.ndarray:
    return np.asarray(rgb, np.float32) + rng.uniform(-amount, amount, 3).astype(np.float32)


def _noise(rng: np.random.Generator, h: int, w: int, sigma: float) -> np.ndarray:
    return rng.normal(0.0, sigma, (h, w, 1)).astype(np.float32)


def _sky(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    # smooth vertical gradient, light blue to near white
    yy, _ = _grid(h, w)
    t = (yy / max(h - 1, 1))[..., None]
    top, bottom = _jitter(rng, (110, 170, 235)), _jitter(rng, (215, 230, 250))
    return top * (1 - t) + bottom * t + _noise(rng, h, w, 2.0)


def _grass(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    # green with strong speckle and short vertical blades
    base = _jitter(rng, (60, 135, 45))
    blades = np.sin(np.arange(w, dtype=np.float32) * rng.uniform(1.1, 1.6))[None, :, None] * 18
    return base + blades + rng.normal(0, 22, (h, w, 3)).astype(np.float32) * [0.6, 1.0, 0.5]


def _brick(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    # red bricks with light mortar lines, alternate rows offset by half a brick
    yy, xx = _grid(h, w)
    bh, bw = int(rng.integers(6, 10)), int(rng.integers(12, 20))
    row = (yy // bh).astype(np.int64)
    shift = np.where(row % 2 == 1, bw // 2, 0)
    mortar = ((yy % bh) < 1.5) | (((xx + shift) % bw) < 1.5)
    brick = _jitter(rng, (165, 65, 45)) + _noise(rng, h, w, 10.0)
    return np.where(mortar[..., None], _jitter(rng, (205, 200, 185), 6), brick)


def _water(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    # deep blue with horizontal wave bands
    yy, xx = _grid(h, w)
    period, phase = rng.uniform(5.0, 9.0), rng.uniform(0, 2 * np.pi)
    wave = np.sin(2 * np.pi * yy / period + 0.6 * np.sin(xx / 7.0) + phase)[..., None]
    return _jitter(rng, (30, 65, 150)) + wave * np.float32([15, 25, 45])


def _stripes(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    # yellow / black diagonal stripes
    yy, xx = _grid(h, w)
    period = rng.uniform(8.0, 14.0)
    on = ((xx + yy + rng.uniform(0, period)) % period) < period / 2
    return np.where(on[..., None], _jitter(rng, (235, 205, 35)), _jitter(rng, (25, 25, 20), 6))


def _checker(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    # magenta / white checkerboard
    yy, xx = _grid(h, w)
    cell = int(rng.integers(5, 10))
    on = ((yy // cell + xx // cell) % 2) == 0
    return np.where(on[..., None], _jitter(rng, (200, 50, 185)), _jitter(rng, (245, 240, 245), 6))


def _sand(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    # beige with fine grain and sparse dark pebbles
    grain = _jitter(rng, (215, 185, 130)) + _noise(rng, h, w, 9.0)
    pebbles = rng.random((h, w)) < 0.03
    return np.where(pebbles[..., None], np.float32([120, 95, 70]), grain)


def _metal(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    # grey horizontal gradient with fine vertical brushed streaks
    _, xx = _grid(h, w)
    t = (xx / max(w - 1, 1))[..., None]
    shade = 95 + 70 * t + rng.normal(0, 7, (1, w, 1)).astype(np.float32)
    return np.repeat(shade, 3, axis=2) + _noise(rng, h, w, 2.0)


_TEXTURES: tuple[tuple[str, Texture], ...] = (
    ("sky", _sky), ("grass", _grass), ("brick", _brick), ("water", _water),
    ("stripes", _stripes), ("checker", _checker), ("sand", _sand), ("metal", _metal),
)
CLASS_NAMES: tuple[str, ...] = tuple(name for name, _ in _TEXTURES)
"""Class k (annotation value k, 1-based) is CLASS_NAMES[k - 1]."""
# Display colour of each class (close to its texture's main colour), for classes.csv.
CLASS_COLORS: tuple[tuple[int, int, int], ...] = (
    (110, 170, 235), (60, 135, 45), (165, 65, 45), (30, 65, 150),
    (235, 205, 35), (200, 50, 185), (215, 185, 130), (130, 130, 130))
MAX_CLASSES = len(_TEXTURES)


def _shape_mask(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    yy, xx = _grid(h, w)
    kind = rng.integers(4)
    cy, cx = rng.uniform(0.15, 0.85) * h, rng.uniform(0.15, 0.85) * w
    if kind == 0:  # ellipse
        ry, rx = rng.uniform(0.08, 0.3) * h, rng.uniform(0.08, 0.3) * w
        return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
    if kind == 1:  # rectangle
        hh, hw = rng.uniform(0.08, 0.3) * h, rng.uniform(0.08, 0.3) * w
        return (np.abs(yy - cy) <= hh) & (np.abs(xx - cx) <= hw)
    if kind == 2:  # vertical or horizontal bar across the image
        if rng.integers(2):
            return np.abs(xx - cx) <= rng.uniform(0.05, 0.12) * w
        return np.abs(yy - cy) <= rng.uniform(0.05, 0.12) * h
    # triangle pointing up
    half, height = rng.uniform(0.12, 0.3) * w, rng.uniform(0.15, 0.4) * h
    top = cy - height / 2
    rel = (yy - top) / height
    return (rel >= 0) & (rel <= 1) & (np.abs(xx - cx) <= rel * half)


def _outline(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` with a 4-neighbour outside it."""
    inner = mask.copy()
    inner[1:, :] &= mask[:-1, :]
    inner[:-1, :] &= mask[1:, :]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    return mask & ~inner


def make_scene(rng: np.random.Generator, height: int, width: int,
               num_class: int = MAX_CLASSES) -> tuple[np.ndarray, np.ndarray]:
    """One scene: (RGB uint8 [H, W, 3], annotation uint8 [H, W] in 0..num_class)."""
    h, w = height, width
    labels = np.empty((h, w), np.uint8)
    yy, xx = _grid(h, w)
    upper, lower = (int(c) + 1 for c in rng.choice(num_class, 2, replace=False))
    horizon = (rng.uniform(0.3, 0.7) * h
               + rng.uniform(0, 0.08) * h * np.sin(xx / rng.uniform(6, 20) + rng.uniform(0, 6.3)))
    labels[:] = np.where(yy < horizon, upper, lower)

    unlabeled = np.zeros((h, w), bool)
    for _ in range(int(rng.integers(1, 5))):
        mask = _shape_mask(rng, h, w)
        labels[mask] = int(rng.integers(num_class)) + 1
        unlabeled |= _outline(mask)
    unlabeled &= rng.random() < 0.8  # most scenes have outlines left unlabeled

    image = np.zeros((h, w, 3), np.float32)
    for cls in np.unique(labels):
        image[labels == cls] = _TEXTURES[cls - 1][1](rng, h, w)[labels == cls]

    if rng.random() < 0.3:  # a "clutter" blob of random colour noise, unlabeled
        cy, cx, radius = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(0.06, 0.15) * min(h, w)
        blob = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius ** 2
        image[blob] = rng.uniform(0, 255, (int(blob.sum()), 3))
        unlabeled |= blob
    labels[unlabeled] = 0
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), labels


def _image_size(rng: np.random.Generator, index: int, size_range: tuple[int, int]) -> tuple[int, int]:
    """(height, width): even indices landscape (h <= w), odd indices portrait (h > w)."""
    lo, hi = size_range
    long_side = int(rng.integers(lo, hi + 1))
    short_side = int(rng.integers(lo, long_side)) if long_side > lo else lo
    if index % 2 == 1 and short_side < long_side:
        return long_side, short_side
    return short_side, long_side


def make_synthetic_dataset(root: str, num_train: int = 200, num_val: int = 50,
                           size_range: tuple[int, int] = (64, 160), num_class: int = MAX_CLASSES,
                           seed: int = 0) -> dict[str, str]:
    """Write the data set under ``root``; return {"training": odgt path,
    "validation": odgt path, "classes": class table path}.

    Sides are drawn from ``size_range`` (inclusive); even-numbered images are
    landscape, odd-numbered portrait. ``num_class`` (2..MAX_CLASSES) selects
    the first classes of ``CLASS_NAMES``.
    """
    if not 2 <= num_class <= MAX_CLASSES:
        raise ValueError(f"num_class must be in 2..{MAX_CLASSES}, got {num_class}")
    lo, hi = int(size_range[0]), int(size_range[1])
    if not 8 <= lo <= hi:
        raise ValueError(f"size_range must be (lo, hi) with 8 <= lo <= hi, got {size_range}")
    out = {}
    for split_id, (split, count) in enumerate((("training", num_train), ("validation", num_val))):
        os.makedirs(os.path.join(root, "images", split), exist_ok=True)
        os.makedirs(os.path.join(root, "annotations", split), exist_ok=True)
        lines = []
        for i in range(count):
            rng = np.random.default_rng([seed, split_id, i])
            h, w = _image_size(rng, i, (lo, hi))
            image, labels = make_scene(rng, h, w, num_class)
            rel_img = f"images/{split}/scene_{i:05d}.jpg"
            rel_seg = f"annotations/{split}/scene_{i:05d}.png"
            Image.fromarray(image).save(os.path.join(root, rel_img), quality=95)
            Image.fromarray(labels).save(os.path.join(root, rel_seg))
            lines.append(json.dumps({"fpath_img": rel_img, "fpath_segm": rel_seg,
                                     "width": w, "height": h}))
        odgt = os.path.join(root, f"{split}.odgt")
        with open(odgt, "w", encoding="utf-8") as f:
            f.write("".join(line + "\n" for line in lines))
        out[split] = odgt
    from .classes import write_class_table
    out["classes"] = os.path.join(root, "classes.csv")
    write_class_table(out["classes"], CLASS_NAMES[:num_class], CLASS_COLORS[:num_class])
    return out
