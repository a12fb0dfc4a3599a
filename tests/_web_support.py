"""Shared by the web demo tests: a small model with parity-rule weights and photos."""
from __future__ import annotations

import io
import os

import numpy as np
import torch
from PIL import Image

from mit_semseg.models import ModelBuilder

from _support import rule_state_dict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CFG = os.path.join(ROOT, "config", "synthetic-demo.yaml")
# MobileNetV2 + C1 (deep sup.) with the 150 ADE20K classes: small and fast, and
# the class names are real ones; two small test scales.
OPTS = ["MODEL.arch_encoder", "mobilenetv2dilated", "MODEL.fc_dim", "320",
        "MODEL.arch_decoder", "c1_deepsup", "DATASET.num_class", "150",
        "DATASET.imgSizes", "(40, 56)", "DATASET.imgMaxSize", "120",
        "TEST.checkpoint", "epoch_1.pth", "TEST.workers", "0"]


def write_rule_checkpoint(folder: str, encoder: str = "mobilenetv2dilated",
                          decoder: str = "c1_deepsup", fc_dim: int = 320,
                          num_class: int = 150, epoch: int = 1) -> None:
    """``folder/{encoder,decoder}_epoch_<epoch>.pth`` filled by the parity weight rule."""
    os.makedirs(folder, exist_ok=True)
    nets = {"encoder": ModelBuilder.build_encoder(encoder, fc_dim, "", pretrained=False),
            "decoder": ModelBuilder.build_decoder(decoder, fc_dim, num_class, "",
                                                  use_softmax=True)}
    for role, net in nets.items():
        keys = [(k, v.shape) for k, v in net.state_dict().items()]
        torch.save(rule_state_dict(keys), os.path.join(folder, f"{role}_epoch_{epoch}.pth"))


def photo(height: int = 64, width: int = 80) -> np.ndarray:
    """A smooth colour gradient with a bright square: a few classes under rule weights."""
    yy, xx = np.mgrid[0:height, 0:width]
    arr = np.stack([xx * 255 // max(width - 1, 1), yy * 255 // max(height - 1, 1),
                    (xx + yy) * 127 // max(width + height - 2, 1)], axis=-1)
    arr[height // 4: height // 2, width // 4: width // 2] = (250, 240, 30)
    return arr.astype(np.uint8)


def encode(arr: np.ndarray, fmt: str = "PNG", **kwargs) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt, **kwargs)
    return buf.getvalue()
