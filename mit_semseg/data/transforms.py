"""The one preprocessing rule: how a photo becomes the network's input.

Every path that feeds a network uses these functions: the datasets (training,
validation, test), the inference engine (whole-image copies and slide-mode
tiles), the web demo through the engine, and the export metadata, which
records :meth:`Preprocess.metadata` so that a deployed model carries it.

* colours: RGB scaled to [0, 1], then ImageNet mean/std, in float32 with the
  original's order of operations (divide by 255, subtract, divide);
* sizes: the short side scaled to each entry of ``imgSizes`` with the long
  side capped at ``imgMaxSize`` (truncated to int), both sides then rounded up
  to a multiple of ``padding_constant``; PIL bilinear resampling.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "imresize", "normalize", "round2nearest_multiple",
           "scaled_size", "Preprocess"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_MEAN = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(3, 1, 1)
_STD = torch.tensor(IMAGENET_STD, dtype=torch.float32).view(3, 1, 1)

_RESAMPLE = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
             "bicubic": Image.Resampling.BICUBIC}


def imresize(im: Image.Image, size: tuple[int, int], interp: str = "bilinear") -> Image.Image:
    """Resize a PIL image to ``size`` = (width, height) with ``interp`` (nearest, bilinear, bicubic)."""
    if interp not in _RESAMPLE:
        raise ValueError(f"imresize: unknown interp {interp!r}; expected one of {sorted(_RESAMPLE)}")
    return im.resize(size, _RESAMPLE[interp])


def normalize(image: Image.Image | np.ndarray) -> torch.Tensor:
    """RGB image (PIL or ``H x W x 3`` uint8) -> float32 ``[3, H, W]`` tensor, scaled to
    [0, 1] then ImageNet-normalised with the same float32 operations as the original."""
    arr = np.asarray(image, dtype=np.uint8)
    chw = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1))).to(torch.float32)
    return chw.div_(255.0).sub_(_MEAN).div_(_STD)


def round2nearest_multiple(x: int, p: int) -> int:
    """Smallest multiple of ``p`` that is >= ``x``."""
    return ((x - 1) // p + 1) * p


def scaled_size(height: int, width: int, short_size: int, max_size: int) -> tuple[int, int]:
    """(height, width) after scaling the short side to ``short_size`` with the long
    side capped at ``max_size``; truncated to int like the original."""
    scale = min(short_size / float(min(height, width)), max_size / float(max(height, width)))
    return max(1, int(height * scale)), max(1, int(width * scale))


def _sizes_tuple(img_sizes: Any) -> tuple[int, ...]:
    if isinstance(img_sizes, (list, tuple)):
        return tuple(int(s) for s in img_sizes)
    return (int(img_sizes),)


@dataclass(frozen=True)
class Preprocess:
    """The resize rule of one model: ``imgSizes`` (short sides, one copy each),
    ``imgMaxSize`` (cap of the long side) and ``padding_constant``."""

    img_sizes: tuple[int, ...] = (300, 375, 450, 525, 600)
    max_size: int = 1000
    padding: int = 8

    def __post_init__(self) -> None:
        object.__setattr__(self, "img_sizes", _sizes_tuple(self.img_sizes))
        object.__setattr__(self, "max_size", int(self.max_size))
        object.__setattr__(self, "padding", int(self.padding))

    @classmethod
    def from_config(cls, opt: Any) -> "Preprocess":
        """From a ``cfg.DATASET`` node (``imgSizes``, ``imgMaxSize``, ``padding_constant``)."""
        return cls(opt.imgSizes, opt.imgMaxSize, opt.padding_constant)

    def copy_size(self, height: int, width: int, short: int) -> tuple[int, int]:
        """(height, width) of the copy with short side ``short``, padding included."""
        h, w = scaled_size(height, width, short, self.max_size)
        return round2nearest_multiple(h, self.padding), round2nearest_multiple(w, self.padding)

    def scales(self, img: Image.Image, sizes: Sequence[int] | None = None) -> list[torch.Tensor]:
        """One normalised ``[1, 3, h, w]`` tensor per short side in ``sizes`` (default:
        ``img_sizes``) of an RGB PIL image."""
        width, height = img.size
        out = []
        for short in (self.img_sizes if sizes is None else _sizes_tuple(sizes)):
            h, w = self.copy_size(height, width, short)
            out.append(normalize(imresize(img, (w, h), "bilinear")).unsqueeze(0).contiguous())
        return out

    def metadata(self) -> dict[str, Any]:
        """The rule as plain values (recorded in exported models)."""
        return {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "scale": 1.0 / 255.0,
                "channel_order": "RGB", "imgSizes": list(self.img_sizes),
                "imgMaxSize": self.max_size, "padding_constant": self.padding,
                "resample": "bilinear"}
