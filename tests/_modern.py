"""Tiny SegFormer and DINOv2 models as checkpoints + configs, for the tests that run
them through everything downstream (test.py, slide mode, the web API, model
folders, ONNX): tests/models/test_segformer_downstream.py, test_dinov2_downstream.py."""
from __future__ import annotations

import os

import numpy as np
import torch
from PIL import Image

from _support import run_script

NUM_CLASS = 5

FAMILIES = {
    "segformer": """MODEL:
  arch_encoder: "mit_b0"
  arch_decoder: "segformer_head"
  fc_dim: 32
  encoder_options:
    embed_dims: [8, 16, 24, 32]
    depths: [1, 1, 1, 1]
    num_heads: [1, 2, 3, 4]
DATASET:
  padding_constant: 32
  segm_downsampling_rate: 4
""",
    "dinov2": """MODEL:
  arch_encoder: "dinov2_vits14"
  arch_decoder: "dinov2_linear"
  fc_dim: 48
  freeze_encoder: True
  encoder_options:
    layers: 2
    cls_token: True
    model_args: {depth: 2, embed_dim: 24, num_heads: 2, img_size: 28}
DATASET:
  padding_constant: 14
  segm_downsampling_rate: 2
""",
}

COMMON = """DATASET:
  num_class: {num_class}
  imgSizes: (42, 56)
  imgMaxSize: 120
  class_table: ""
MODEL:
  pretrained: False
TEST:
  checkpoint: "epoch_1.pth"
  workers: 0
VAL:
  checkpoint: "epoch_1.pth"
  workers: 0
DIR: "{dir}"
"""


def make_model(folder, family: str) -> str:
    """Write ``folder/config.yaml`` (the family's tiny model) and random weights as
    ``folder/{encoder,decoder}_epoch_1.pth``; returns the config path. The class
    layer is scaled up so that several classes win somewhere on a photo."""
    from mit_semseg.config import load_cfg
    from mit_semseg.models import build_model
    folder = str(folder)
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "config.yaml")
    with open(path, "w") as fh:
        fh.write(_merge(FAMILIES[family], COMMON.format(num_class=NUM_CLASS, dir=folder)))
    cfg = load_cfg(path)
    torch.manual_seed(0)
    net = build_model(cfg)
    with torch.no_grad():
        for name in net.decoder.class_layers:
            layer = net.decoder.get_submodule(name)
            layer.weight.normal_(0.0, 1.0)
    states = net.state_dicts()
    torch.save(states["encoder"], os.path.join(folder, "encoder_epoch_1.pth"))
    torch.save(states["decoder"], os.path.join(folder, "decoder_epoch_1.pth"))
    return path


def _merge(*texts: str) -> str:
    """Two small YAML documents of nested sections as one (sections joined)."""
    import yaml
    out: dict = {}
    for text in texts:
        for key, value in yaml.safe_load(text).items():
            if isinstance(value, dict):
                out.setdefault(key, {}).update(value)
            else:
                out[key] = value
    return yaml.safe_dump(out)


def photo(height: int = 53, width: int = 71, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (height, width, 3)).astype(np.uint8)
    arr[height // 4: height // 2, width // 3:] = (250, 240, 30)
    return arr


def run_test_py(tmp_path, cfg_path: str, image: np.ndarray, *opts):
    """test.py on ``image`` with ``TEST.save_labels``; returns (process, 0-based labels)."""
    src = os.path.join(str(tmp_path), "photo.png")
    Image.fromarray(image).save(src)
    out = os.path.join(str(tmp_path), "out")
    res = run_script("test.py", "--imgs", src, "--cfg", cfg_path, "--gpu", "cpu",
                     "TEST.result", out, "TEST.save_labels", "True", *opts)
    labels = None
    if res.returncode == 0:
        labels = np.asarray(Image.open(os.path.join(out, "photo_labels.png"))).astype(np.int64) - 1
    return res, labels
