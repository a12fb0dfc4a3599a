"""The small scene the old-style clients run on: data, a checkpoint, a config.

``make_scenario(folder)`` writes, under ``folder``:

* ``data/``: the ADE20K colour and name tables (the clients read them from
  ``./data`` as the original scripts did) and a synthetic data set (8
  classes, 4 validation scenes, 1 left-right symmetric training scene so that
  the original's unconditional random flip changes nothing);
* ``ckpt/``: random resnet18dilated + c1 weights as ``*_epoch_1.pth``, the
  same bits on every CPU (torch's ``normal_`` is not: its vectorised and
  scalar kernels round differently);
* ``scene.yaml``: a config with only keys the original package knows.

Used by tests/test_compat_clients.py and by side_by_side.py (the comparison
with the original package).
"""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import torch
from PIL import Image

from mit_semseg.models import ModelBuilder
from mit_semseg.data.synthetic import make_synthetic_dataset

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NUM_CLASS = 8

CONFIG = """DATASET:
  root_dataset: "{data}"
  list_train: "{data}/train_symmetric.odgt"
  list_val: "{data}/validation.odgt"
  num_class: {num_class}
  imgSizes: (40, 56)
  imgMaxSize: 120
  padding_constant: 8
  segm_downsampling_rate: 8
MODEL:
  arch_encoder: "resnet18dilated"
  arch_decoder: "c1"
  fc_dim: 512
TRAIN:
  batch_size_per_gpu: 1
  num_epoch: 2
  start_epoch: 1
  epoch_iters: 3
  lr_encoder: 0.02
  lr_decoder: 0.02
  workers: 0
  disp_iter: 1
  seed: 304
VAL:
  batch_size: 1
  visualize: True
  checkpoint: "epoch_1.pth"
TEST:
  batch_size: 1
  checkpoint: "epoch_1.pth"
  result: "{folder}/test_out"
DIR: "{folder}/ckpt"
"""


def _symmetric_training_scene(data: str) -> str:
    """One training image equal to its mirror image (so any flip gives the same batch)."""
    rng = np.random.default_rng(7)
    h, w = 48, 64
    half_img = rng.integers(0, 256, (h, w // 2, 3), dtype=np.uint8)
    half_seg = rng.integers(1, NUM_CLASS + 1, (h // 8, w // 16), dtype=np.uint8)
    half_seg = half_seg.repeat(8, axis=0).repeat(8, axis=1)
    img = np.concatenate([half_img, half_img[:, ::-1]], axis=1)
    seg = np.concatenate([half_seg, half_seg[:, ::-1]], axis=1)
    Image.fromarray(img).save(os.path.join(data, "sym.png"))
    Image.fromarray(seg).save(os.path.join(data, "sym_seg.png"))
    odgt = os.path.join(data, "train_symmetric.odgt")
    with open(odgt, "w") as fh:
        fh.write(json.dumps({"fpath_img": "sym.png", "fpath_segm": "sym_seg.png",
                             "width": w, "height": h}) + "\n")
    return odgt


def _portable_weights(module: torch.nn.Module, seed: int) -> None:
    """Overwrite every convolution with uniform values drawn from integers.

    Each value is an integer below 2**23 times a power of two, so it is exact in
    float32 and depends only on numpy's PCG64 stream. The bounds are the powers of
    two nearest to those of the original's initialisation (Kaiming-normal on
    fan-in for weights, spread std * sqrt(3); torch's default 1/sqrt(fan-in) for
    biases), so activations and losses keep their usual scale.
    """
    rng = np.random.default_rng(seed)
    for sub in module.modules():
        if not isinstance(sub, torch.nn.Conv2d):
            continue
        fan_in = sub.in_channels // sub.groups * sub.kernel_size[0] * sub.kernel_size[1]
        spreads = {"weight": np.sqrt(6.0 / fan_in), "bias": 1.0 / np.sqrt(fan_in)}
        for name, spread in spreads.items():
            param = getattr(sub, name)
            if param is None:
                continue
            bound = 2.0 ** round(float(np.log2(spread)))
            ints = rng.integers(-2 ** 23, 2 ** 23, size=tuple(param.shape))
            param.data.copy_(torch.from_numpy(ints * (bound / 2 ** 23)).float())


def make_scenario(folder: str) -> str:
    """Write the scenario under ``folder``; returns the config path."""
    data = os.path.join(folder, "data")
    os.makedirs(data, exist_ok=True)
    for name in ("color150.mat", "object150_info.csv"):
        shutil.copy(os.path.join(ROOT, "data", name), data)
    make_synthetic_dataset(data, num_train=0, num_val=4, size_range=(40, 72),
                           num_class=NUM_CLASS, seed=3)
    _symmetric_training_scene(data)
    ckpt = os.path.join(folder, "ckpt")
    os.makedirs(ckpt, exist_ok=True)
    enc = ModelBuilder.build_encoder("resnet18dilated", 512, "", pretrained=False)
    dec = ModelBuilder.build_decoder("c1", 512, NUM_CLASS, "")
    _portable_weights(enc, seed=0)
    _portable_weights(dec, seed=1)
    torch.save(enc.state_dict(), os.path.join(ckpt, "encoder_epoch_1.pth"))
    torch.save(dec.state_dict(), os.path.join(ckpt, "decoder_epoch_1.pth"))
    cfg_path = os.path.join(folder, "scene.yaml")
    with open(cfg_path, "w") as fh:
        fh.write(CONFIG.format(data=data, folder=folder, num_class=NUM_CLASS))
    return cfg_path
