"""Shared by the web demo tests: a small model with parity-rule weights and photos."""
from __future__ import annotations

import io
import os

import numpy as np
from PIL import Image


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CFG = os.path.join(ROOT, "config", "ade20k-mobilenetv2dilated-c1_deepsup.yaml")
NAME = "ade20k-mobilenetv2dilated-c1_deepsup"
# The released MobileNetV2 + C1 (deep sup.) preset (150 ADE20K classes, real
# names), small test scales and parity-rule weights.
OPTS = ["DATASET.imgSizes", "(40, 56)", "DATASET.imgMaxSize", "120",
        "TEST.checkpoint", "epoch_1.pth", "TEST.workers", "0"]


# 400 classes: label values above 255 (16-bit label PNGs); under rule weights
# the test photos give classes 95 and 362.
WIDE_OPTS = OPTS + ["DATASET.num_class", "400"]


def write_rule_checkpoint(folder: str, opts=OPTS) -> None:
    """The checkpoint of CFG + ``opts`` in ``folder``, filled by the parity weight rule."""
    from mit_semseg.config import load_cfg
    from mit_semseg.benchmark import write_rule_checkpoint as write
    write(load_cfg(CFG, opts), folder)


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


def assert_web_api_gives_segmenter_labels(model_cfg, image: np.ndarray) -> None:
    """``/api/segment`` of a web app over the model of ``model_cfg`` answers with the
    labels its Segmenter computes at the scales the answer names."""
    import base64

    from fastapi.testclient import TestClient

    from mit_semseg.web.app import create_app
    from mit_semseg.web.images import read_label_png
    from mit_semseg.web.models import WebModel
    web = WebModel.from_config(model_cfg, device="cpu")
    with TestClient(create_app([web])) as client:
        res = client.post("/api/segment", files={"file": ("p.png", encode(image), "image/png")})
    assert res.status_code == 200, res.text
    answer = res.json()
    labels = read_label_png(base64.b64decode(answer["labels_png"]))
    assert np.array_equal(labels, web.segmenter.predict(image, imgSizes=answer["scales"],
                                                        flip=answer["flip"]))
